//! Apps: create, get, list, delete (with their machines).

use super::*;

impl Hangar {
    pub async fn create_app(
        &self,
        name: String,
        org: String,
        network: String,
        idempotency_key: Option<String>,
        app_role: String,
    ) -> ServiceResult<AppRecord> {
        ids::check_app_name(&name).map_err(ServiceError::bad_request)?;
        let app = AppRecord {
            id: ids::new_app_id(),
            name,
            org_slug: org,
            network,
            internal_numeric_id: 0,
            created_at: now_ms(),
            idempotency_key,
            app_role,
        };
        db(&self.store, move |s| s.create_app(&app)).await
    }

    pub async fn app_by_idempotency_key(&self, key: &str) -> ServiceResult<Option<AppRecord>> {
        let k = key.to_string();
        db(&self.store, move |s| s.get_app_by_idempotency_key(&k)).await
    }

    pub async fn get_app(&self, name: &str) -> ServiceResult<AppRecord> {
        let n = name.to_string();
        db_read(&self.store, move |s| s.get_app(&n))
            .await?
            .ok_or_else(|| ServiceError::app_not_found(name))
    }

    /// Whether the store answers (for health checks): one cheap read.
    pub async fn store_ok(&self) -> ServiceResult<()> {
        db(&self.store, |s| s.get_app("").map(drop)).await
    }

    pub async fn list_apps(&self, org: Option<String>) -> ServiceResult<Vec<(AppRecord, i64)>> {
        db(&self.store, move |s| {
            let apps = s.list_apps(org.as_deref())?;
            apps.into_iter()
                .map(|a| {
                    let n = s.count_machines(&a.name)?;
                    Ok((a, n))
                })
                .collect()
        })
        .await
    }

    pub async fn count_machines(&self, app: &str) -> ServiceResult<i64> {
        let a = app.to_string();
        db(&self.store, move |s| s.count_machines(&a)).await
    }

    /// Deletes an app; with `force`, destroys its machines first.
    pub async fn delete_app(&self, name: &str, force: bool) -> ServiceResult<()> {
        let lock = self.app_lock(name);
        let _exclusive = lock.write().await;
        self.get_app(name).await?;
        let machines = self.list_machine_records(name, false).await?;
        if self.is_cluster() {
            let elsewhere: Vec<String> = machines
                .iter()
                .filter(|m| m.host_id != self.host_id)
                .map(|m| format!("{} on {}", m.id, m.host_id))
                .collect();
            if !elsewhere.is_empty() {
                return Err(ServiceError::Conflict(format!(
                    "app {name:?} has machines on other hosts ({}); destroy them first (any \
                     host's API forwards a machine's destroy to its host)",
                    elsewhere.join(", ")
                )));
            }
            let n = name.to_string();
            let volumes = db(&self.store, move |s| s.list_volumes(&n)).await?;
            let remote: Vec<String> = volumes
                .iter()
                .filter(|v| v.deleted_at.is_none() && v.host_id != self.host_id)
                .map(|v| format!("{} on {}", v.id, v.host_id))
                .collect();
            if !remote.is_empty() {
                return Err(ServiceError::Conflict(format!(
                    "app {name:?} has volumes on other hosts ({}); destroy them first",
                    remote.join(", ")
                )));
            }
        }
        // As on Fly (reference 1.1): machines that are stopped or never started go with the
        // app; only running ones need `force` (which kills them).
        let running: Vec<&MachineRecord> = machines
            .iter()
            .filter(|m| m.state.may_be_running())
            .collect();
        if !running.is_empty() && !force {
            return Err(ServiceError::precondition(format!(
                "app {name:?} still has {} running machine(s) ({}); stop them first or pass force=true",
                running.len(),
                running
                    .iter()
                    .map(|m| format!("{} {}", m.id, m.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for m in machines {
            self.destroy_locked(&m.app, &m.id, None, true, true).await?;
        }
        // Its volumes go with it: their data, snapshots and rows; and its hostnames.
        self.purge_app_volumes(name).await?;
        for c in self.list_certificates(name).await? {
            if let Some(p) = self.proxy() {
                p.remove_custom_certificate(&c.hostname);
            }
        }
        for a in self.list_ip_assignments(name).await? {
            if let (false, Some(p), Ok(ip)) = (a.shared, self.proxy(), a.ip.parse()) {
                p.remove_dedicated(ip);
            }
        }
        let n = name.to_string();
        db(&self.store, move |s| s.delete_app(&n)).await?;
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|_, h| h.watch.borrow().state != MachineState::Destroyed);
        drop(handles);
        self.app_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }
}
