//! Typed wrappers for the endpoints of reference sections 1.1–1.4, 1.6, 1.7 and 3.3.

use std::collections::BTreeMap;

use hangar_api::{
    App, CreateAppRequest, CreateMachineRequest, CreateVolumeRequest, ExecRequest, ExecResponse,
    ExtendVolumeRequest, ExtendVolumeResponse, LeaseRequest, LeaseResponse, ListAppsResponse,
    ListSecretsResponse, Machine, MachineEvent, MachineVersion, MetadataValueRequest,
    MetadataValueResponse, OkResponse, SetSecretsRequest, SetSecretsResponse, StartResponse,
    StopRequest, UpdateMetadataRequest, UpdateVolumeRequest, Volume, VolumeSnapshot, WaitResponse,
};

use crate::client::{encode, Client};
use crate::error::ClientError;

/// Filters of `GET /apps/{app}/machines`.
#[derive(Debug, Clone, Default)]
pub struct ListMachinesOptions {
    pub include_deleted: bool,
    pub include_leases: bool,
    pub region: Option<String>,
    /// Sent comma-separated: `created`, `started`, `stopped`, `suspended`, …
    pub states: Vec<String>,
    pub summary: bool,
    /// `metadata.KEY=VALUE`; every pair must match.
    pub metadata: Vec<(String, String)>,
}

/// Query of `POST …/restart`.
#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// Signal name (`SIGTERM`) to stop with.
    pub signal: Option<String>,
    /// Seconds to wait before killing.
    pub timeout_secs: Option<u64>,
    pub force_stop: bool,
}

/// Query of `GET …/wait`.
#[derive(Debug, Clone, Default)]
pub struct WaitOptions {
    /// Sent repeated (`state=a&state=b`) like fly-go. Empty means the server default (`started`).
    pub states: Vec<String>,
    /// Seconds; the server caps it at 60.
    pub timeout_secs: Option<u64>,
    /// Instance id (ULID) to wait on.
    pub version: Option<String>,
    pub from_event_id: Option<String>,
}

fn app_path(app: &str) -> String {
    format!("/v1/apps/{}", encode(app))
}

fn volume_path(app: &str, id: &str) -> String {
    format!("/v1/apps/{}/volumes/{}", encode(app), encode(id))
}

fn machine_path(app: &str, id: &str) -> String {
    format!("/v1/apps/{}/machines/{}", encode(app), encode(id))
}

impl Client {
    // ---- apps (1.1) ----

    /// `POST /v1/apps` (201 with the app).
    pub async fn create_app(&self, req: &CreateAppRequest) -> Result<App, ClientError> {
        self.post("/v1/apps").json(req).send().await
    }

    /// `GET /v1/apps?org_slug=…`.
    pub async fn list_apps(&self, org_slug: &str) -> Result<ListAppsResponse, ClientError> {
        self.get("/v1/apps")
            .query("org_slug", org_slug)
            .send()
            .await
    }

    /// `GET /v1/apps/{app}`.
    pub async fn get_app(&self, app: &str) -> Result<App, ClientError> {
        self.get(app_path(app)).send().await
    }

    /// `DELETE /v1/apps/{app}[?force=true]` (202). `force` stops the app's machines first.
    pub async fn delete_app(&self, app: &str, force: bool) -> Result<(), ClientError> {
        self.delete(app_path(app))
            .query_opt("force", force.then_some("true"))
            .send_empty()
            .await
    }

    // ---- machines (1.2) ----

    /// `GET /v1/apps/{app}/machines` with filters.
    pub async fn list_machines(
        &self,
        app: &str,
        opts: &ListMachinesOptions,
    ) -> Result<Vec<Machine>, ClientError> {
        let mut req = self
            .get(format!("{}/machines", app_path(app)))
            .query_opt("include_deleted", opts.include_deleted.then_some("true"))
            .query_opt("include_leases", opts.include_leases.then_some("true"))
            .query_opt("region", opts.region.as_deref())
            .query_opt("summary", opts.summary.then_some("true"));
        if !opts.states.is_empty() {
            req = req.query("state", opts.states.join(","));
        }
        for (k, v) in &opts.metadata {
            req = req.query(&format!("metadata.{k}"), v);
        }
        req.send().await
    }

    /// `GET /v1/apps/{app}/machines/{id}`.
    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.get(machine_path(app, id)).send().await
    }

    /// `POST /v1/apps/{app}/machines`.
    pub async fn create_machine(
        &self,
        app: &str,
        req: &CreateMachineRequest,
    ) -> Result<Machine, ClientError> {
        self.post(format!("{}/machines", app_path(app)))
            .json(req)
            .send()
            .await
    }

    /// `POST /v1/apps/{app}/machines/{id}`: full config replace.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &CreateMachineRequest,
        nonce: Option<&str>,
    ) -> Result<Machine, ClientError> {
        self.post(machine_path(app, id))
            .lease_nonce(nonce)
            .json(req)
            .send()
            .await
    }

    /// `DELETE /v1/apps/{app}/machines/{id}[?force=true]`.
    pub async fn delete_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.delete(machine_path(app, id))
            .query_opt("force", force.then_some("true"))
            .lease_nonce(nonce)
            .send()
            .await
    }

    /// `POST …/start`.
    pub async fn start_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<StartResponse, ClientError> {
        self.post(format!("{}/start", machine_path(app, id)))
            .lease_nonce(nonce)
            .send()
            .await
    }

    /// `POST …/stop` with an optional signal and timeout.
    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: &StopRequest,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.post(format!("{}/stop", machine_path(app, id)))
            .lease_nonce(nonce)
            .json(req)
            .send()
            .await
    }

    /// `POST …/restart?force_stop=&timeout=&signal=`; `timeout_secs` is sent as seconds.
    pub async fn restart_machine(
        &self,
        app: &str,
        id: &str,
        opts: &RestartOptions,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.post(format!("{}/restart", machine_path(app, id)))
            .query_opt("force_stop", opts.force_stop.then_some("true"))
            .query_opt("timeout", opts.timeout_secs)
            .query_opt("signal", opts.signal.as_deref())
            .lease_nonce(nonce)
            .send()
            .await
    }

    /// `POST …/suspend`.
    pub async fn suspend_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.post(format!("{}/suspend", machine_path(app, id)))
            .lease_nonce(nonce)
            .send()
            .await
    }

    /// `POST …/signal` with a numeric signal, as fly-go's `Kill` sends `{"signal": 9}`.
    pub async fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: i32,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.post(format!("{}/signal", machine_path(app, id)))
            .lease_nonce(nonce)
            .json(&serde_json::json!({ "signal": signal }))
            .send()
            .await
    }

    /// `POST …/exec`: runs a command to completion and returns its output.
    pub async fn exec_machine(
        &self,
        app: &str,
        id: &str,
        req: &ExecRequest,
    ) -> Result<ExecResponse, ClientError> {
        self.post(format!("{}/exec", machine_path(app, id)))
            .json(req)
            .send()
            .await
    }

    // ---- secrets (1.7) ----

    /// `GET /v1/apps/{app}/secrets[?min_version=N]`: names, digests and times.
    pub async fn list_secrets(
        &self,
        app: &str,
        min_version: Option<u64>,
    ) -> Result<ListSecretsResponse, ClientError> {
        self.get(format!("{}/secrets", app_path(app)))
            .query_opt("min_version", min_version)
            .send()
            .await
    }

    /// `POST /v1/apps/{app}/secrets`: sets (`Some`) and unsets (`None`) in one write.
    pub async fn set_secrets(
        &self,
        app: &str,
        values: BTreeMap<String, Option<String>>,
    ) -> Result<SetSecretsResponse, ClientError> {
        self.post(format!("{}/secrets", app_path(app)))
            .json(&SetSecretsRequest { values })
            .send()
            .await
    }

    // ---- volumes (1.6) ----

    /// `GET /v1/apps/{app}/volumes` (destroyed ones included, as Fly lists them).
    pub async fn list_volumes(&self, app: &str) -> Result<Vec<Volume>, ClientError> {
        self.get(format!("{}/volumes", app_path(app))).send().await
    }

    /// `POST /v1/apps/{app}/volumes`.
    pub async fn create_volume(
        &self,
        app: &str,
        req: &CreateVolumeRequest,
    ) -> Result<Volume, ClientError> {
        self.post(format!("{}/volumes", app_path(app)))
            .json(req)
            .send()
            .await
    }

    /// `GET /v1/apps/{app}/volumes/{id}`.
    pub async fn get_volume(&self, app: &str, id: &str) -> Result<Volume, ClientError> {
        self.get(volume_path(app, id)).send().await
    }

    /// `PUT /v1/apps/{app}/volumes/{id}`.
    pub async fn update_volume(
        &self,
        app: &str,
        id: &str,
        req: &UpdateVolumeRequest,
    ) -> Result<Volume, ClientError> {
        self.put(volume_path(app, id)).json(req).send().await
    }

    /// `DELETE /v1/apps/{app}/volumes/{id}`.
    pub async fn destroy_volume(&self, app: &str, id: &str) -> Result<Volume, ClientError> {
        self.delete(volume_path(app, id)).send().await
    }

    /// `PUT /v1/apps/{app}/volumes/{id}/extend`.
    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: i64,
    ) -> Result<ExtendVolumeResponse, ClientError> {
        self.put(format!("{}/extend", volume_path(app, id)))
            .json(&ExtendVolumeRequest { size_gb })
            .send()
            .await
    }

    /// `GET /v1/apps/{app}/volumes/{id}/snapshots`.
    pub async fn list_snapshots(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<VolumeSnapshot>, ClientError> {
        self.get(format!("{}/snapshots", volume_path(app, id)))
            .send()
            .await
    }

    /// `POST /v1/apps/{app}/volumes/{id}/snapshots`.
    pub async fn create_snapshot(
        &self,
        app: &str,
        id: &str,
    ) -> Result<VolumeSnapshot, ClientError> {
        self.post(format!("{}/snapshots", volume_path(app, id)))
            .send()
            .await
    }

    /// `POST …/cordon`.
    pub async fn cordon_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.post(format!("{}/cordon", machine_path(app, id)))
            .lease_nonce(nonce)
            .send()
            .await
    }

    /// `POST …/uncordon`.
    pub async fn uncordon_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<OkResponse, ClientError> {
        self.post(format!("{}/uncordon", machine_path(app, id)))
            .lease_nonce(nonce)
            .send()
            .await
    }

    /// `GET …/wait`: one server-side wait; a timeout comes back as an API error with 408.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        opts: &WaitOptions,
    ) -> Result<WaitResponse, ClientError> {
        let mut req = self.get(format!("{}/wait", machine_path(app, id)));
        for state in &opts.states {
            req = req.query("state", state);
        }
        req.query_opt("timeout", opts.timeout_secs)
            .query_opt("version", opts.version.as_deref())
            .query_opt("from_event_id", opts.from_event_id.as_deref())
            .send()
            .await
    }

    /// `GET …/events[?limit=N]`, newest first.
    pub async fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<MachineEvent>, ClientError> {
        self.get(format!("{}/events", machine_path(app, id)))
            .query_opt("limit", limit)
            .send()
            .await
    }

    /// `GET …/versions`.
    pub async fn machine_versions(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<MachineVersion>, ClientError> {
        self.get(format!("{}/versions", machine_path(app, id)))
            .send()
            .await
    }

    // ---- leases (1.3) ----

    /// `GET …/lease`; 404 `lease not found` when nobody holds it.
    pub async fn get_lease(&self, app: &str, id: &str) -> Result<LeaseResponse, ClientError> {
        self.get(format!("{}/lease", machine_path(app, id)))
            .send()
            .await
    }

    /// `POST …/lease`. The ttl goes both in the query (fly-go) and the body (the spec), so
    /// either reading of the contract works. With `nonce`, refreshes a lease we hold.
    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl_secs: u64,
        description: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<LeaseResponse, ClientError> {
        let body = LeaseRequest {
            ttl: Some(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            description: description.map(str::to_string),
        };
        self.post(format!("{}/lease", machine_path(app, id)))
            .query("ttl", ttl_secs)
            .lease_nonce(nonce)
            .json(&body)
            .send()
            .await
    }

    /// `DELETE …/lease` with the nonce header.
    pub async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<(), ClientError> {
        self.delete(format!("{}/lease", machine_path(app, id)))
            .lease_nonce(Some(nonce))
            .send_empty()
            .await
    }

    // ---- metadata (1.4) ----

    /// `GET …/metadata`.
    pub async fn get_metadata(
        &self,
        app: &str,
        id: &str,
    ) -> Result<BTreeMap<String, String>, ClientError> {
        self.get(format!("{}/metadata", machine_path(app, id)))
            .send()
            .await
    }

    /// `GET …/metadata/{key}`.
    pub async fn get_metadata_key(
        &self,
        app: &str,
        id: &str,
        key: &str,
    ) -> Result<MetadataValueResponse, ClientError> {
        self.get(format!(
            "{}/metadata/{}",
            machine_path(app, id),
            encode(key)
        ))
        .send()
        .await
    }

    /// `POST …/metadata/{key}` (204).
    pub async fn set_metadata(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        let body = MetadataValueRequest {
            value: value.to_string(),
            updated_at: None,
        };
        self.post(format!(
            "{}/metadata/{}",
            machine_path(app, id),
            encode(key)
        ))
        .json(&body)
        .send_empty()
        .await
    }

    /// `PATCH …/metadata` (204): bulk update; a `None` value deletes the key.
    pub async fn update_metadata(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMetadataRequest,
    ) -> Result<(), ClientError> {
        self.patch(format!("{}/metadata", machine_path(app, id)))
            .json(req)
            .send_empty()
            .await
    }

    /// `DELETE …/metadata/{key}` (204).
    pub async fn delete_metadata(&self, app: &str, id: &str, key: &str) -> Result<(), ClientError> {
        self.delete(format!(
            "{}/metadata/{}",
            machine_path(app, id),
            encode(key)
        ))
        .send_empty()
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            machine_path("my-app", "abc"),
            "/v1/apps/my-app/machines/abc"
        );
        assert_eq!(app_path("a/b"), "/v1/apps/a%2Fb");
    }
}
