//! Replays, for every call of fly-go's `flaps` client (the one flyctl uses) that Hangar serves,
//! the exact request flaps makes: method, path, query string (flaps' own order and spellings,
//! such as `?kill=`, `?force_stop=`, `?started`), the lowercase `fly-machine-lease-nonce`
//! header, no body where flaps sends none, and bodies byte for byte as Go's encoding/json writes
//! them (fields without `omitempty` as zero values, `&` escaped as `\u0026`). Each answer must be
//! a 2xx that decodes into what flaps reads. Read from fly-go at 22d6e518 (flaps/*.go,
//! machine_types.go, volume_types.go, secrets_types.go). Calls Hangar does not serve answer 501.

mod common;

use common::{certificate_for, error_text, test_image, Daemon};
use hangar_client::RawResponse;
use hyper::Method;
use serde_json::Value;

/// One flaps call; panics unless the answer is a 2xx (flaps' only success test).
async fn call(
    d: &Daemon,
    method: Method,
    path: &str,
    nonce: Option<&str>,
    body: Option<String>,
) -> RawResponse {
    let headers: Vec<(&str, &str)> = nonce
        .map(|n| vec![("fly-machine-lease-nonce", n)])
        .unwrap_or_default();
    let r = d
        .client
        .raw(method.clone(), path, &headers, body.map(String::into_bytes))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        r.status.as_u16() <= 299,
        "{method} {path}: {} {}",
        r.status,
        r.text()
    );
    r
}

/// A call whose answer flaps decodes: the body must be JSON.
async fn decoded(
    d: &Daemon,
    method: Method,
    path: &str,
    nonce: Option<&str>,
    body: Option<String>,
) -> Value {
    let r = call(d, method.clone(), path, nonce, body).await;
    r.json()
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()))
}

async fn wait(d: &Daemon, machine: &str, query: &str) {
    call(
        d,
        Method::GET,
        &format!("/v1/apps/flaps/machines/{machine}/wait?{query}"),
        None,
        None,
    )
    .await;
}

#[tokio::test]
async fn every_flaps_call_hangar_serves_means_what_it_means_on_fly() {
    let d = Daemon::start_with_flags(true, &[]).await;
    let m = "/v1/apps/flaps/machines";

    // Apps: CreateApp (?wait=true, every field), GetApp, AppNameAvailable, ListApps.
    let app = decoded(
        &d,
        Method::POST,
        "/v1/apps?wait=true",
        None,
        Some(r#"{"name":"flaps","org_slug":"personal","network":"","app_role_id":""}"#.into()),
    )
    .await;
    assert_eq!(app["name"], "flaps", "{app}");
    let app = decoded(&d, Method::GET, "/v1/apps/flaps", None, None).await;
    assert_eq!(app["organization"]["slug"], "personal", "{app}");
    assert_eq!(d.get("/v1/apps/flaps-free").await.status, 404);
    for query in ["?org_slug=", "?org_slug=personal"] {
        let apps = decoded(&d, Method::GET, &format!("/v1/apps{query}"), None, None).await;
        assert!(
            apps["apps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == "flaps"),
            "{query}: {apps}"
        );
    }

    // Platform: GetRegions; the region it names is where machines go.
    let regions = decoded(&d, Method::GET, "/v1/platform/regions", None, None).await;
    let region = regions["Nearest"].as_str().unwrap().to_string();
    assert!(
        regions["Regions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == region.as_str()),
        "{regions}"
    );

    // Launch: `init` always present, `skip_secrets` always sent, `force_instance_key` null.
    let image = test_image();
    let launch = format!(
        r#"{{"config":{{"init":{{"cmd":["sleep","3600"]}},"services":[{{"protocol":"tcp","internal_port":8080,"force_instance_key":null}}],"image":"{image}","restart":{{"policy":"no"}}}},"region":"{region}","skip_secrets":false}}"#
    );
    let machine = decoded(&d, Method::POST, m, None, Some(launch)).await;
    let id = machine["id"].as_str().unwrap().to_string();
    assert_eq!(machine["region"], region.as_str(), "{machine}");
    let mid = format!("{m}/{id}");
    // Wait: its defaults, `state` repeated, `timeout` in seconds.
    wait(&d, &id, "state=started&timeout=60").await;

    // Get, List (flaps appends its state argument raw: `?started`), ps, exec.
    let got = decoded(&d, Method::GET, &mid, None, None).await;
    assert_eq!(got["state"], "started", "{got}");
    for query in ["", "?started", "?state=started"] {
        let list = decoded(&d, Method::GET, &format!("{m}{query}"), None, None).await;
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{query}: {list}");
    }
    let ps = decoded(&d, Method::GET, &format!("{mid}/ps"), None, None).await;
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .any(|p| p["command"].as_str().unwrap().contains("sleep")),
        "{ps}"
    );
    // Go escapes `&` in strings; `cmd` is one string.
    let exec = decoded(
        &d,
        Method::POST,
        &format!("{mid}/exec"),
        None,
        Some(r#"{"cmd":"echo a\u0026b","timeout":10}"#.into()),
    )
    .await;
    assert_eq!(
        (exec["exit_code"].as_i64(), exec["stdout"].as_str()),
        (Some(0), Some("a&b\n")),
        "{exec}"
    );

    // A command that cannot run is the command's result, as in a shell: 127 and why.
    let missing = decoded(
        &d,
        Method::POST,
        &format!("{mid}/exec"),
        None,
        Some(r#"{"cmd":"no-such-program"}"#.into()),
    )
    .await;
    assert_eq!(missing["exit_code"], 127, "{missing}");
    assert!(
        missing["stderr"].as_str().unwrap().contains("not found"),
        "{missing}"
    );
    let not_executable = decoded(
        &d,
        Method::POST,
        &format!("{mid}/exec"),
        None,
        Some(r#"{"command":["/etc/passwd"]}"#.into()),
    )
    .await;
    assert_eq!(not_executable["exit_code"], 126, "{not_executable}");

    // Metadata: SetMetadata, GetMetadata, DeleteMetadata.
    call(
        &d,
        Method::POST,
        &format!("{mid}/metadata/role"),
        None,
        Some(r#"{"value":"web"}"#.into()),
    )
    .await;
    let meta = decoded(&d, Method::GET, &format!("{mid}/metadata"), None, None).await;
    assert_eq!(meta["role"], "web", "{meta}");
    call(
        &d,
        Method::DELETE,
        &format!("{mid}/metadata/role"),
        None,
        None,
    )
    .await;

    // Leases: AcquireLease (?ttl, no body), FindLease, RefreshLease (nonce header), an Update
    // under the lease, ReleaseLease.
    let lease = decoded(&d, Method::POST, &format!("{mid}/lease?ttl=30"), None, None).await;
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_string();
    let found = decoded(&d, Method::GET, &format!("{mid}/lease"), None, None).await;
    assert_eq!(found["data"]["nonce"], nonce.as_str(), "{found}");
    let refreshed = decoded(
        &d,
        Method::POST,
        &format!("{mid}/lease?ttl=60"),
        Some(&nonce),
        None,
    )
    .await;
    assert_eq!(refreshed["data"]["nonce"], nonce.as_str(), "{refreshed}");
    let update = format!(
        r#"{{"config":{{"init":{{"cmd":["sleep","3601"]}},"image":"{image}","metadata":{{"fly_process_group":"app"}},"restart":{{"policy":"no"}}}},"skip_secrets":false}}"#
    );
    let updated = decoded(&d, Method::POST, &mid, Some(&nonce), Some(update)).await;
    let version = updated["instance_id"].as_str().unwrap().to_string();
    assert_ne!(
        version,
        machine["instance_id"].as_str().unwrap(),
        "{updated}"
    );
    wait(
        &d,
        &id,
        &format!("state=started&timeout=60&version={version}"),
    )
    .await;
    call(
        &d,
        Method::DELETE,
        &format!("{mid}/lease"),
        Some(&nonce),
        None,
    )
    .await;

    // Cordon, Uncordon, Restart (query only, `force_stop` always), Stop (`"timeout":"0s"` and
    // the id in the body), Start (its answer is decoded), Suspend, Kill (`{"signal":9}`).
    call(&d, Method::POST, &format!("{mid}/cordon"), None, None).await;
    call(&d, Method::POST, &format!("{mid}/uncordon"), None, None).await;
    call(
        &d,
        Method::POST,
        &format!("{mid}/restart?force_stop=false&timeout=10s&signal=SIGTERM"),
        None,
        None,
    )
    .await;
    wait(&d, &id, "state=started&timeout=60").await;
    call(
        &d,
        Method::POST,
        &format!("{mid}/stop"),
        None,
        Some(format!(r#"{{"id":"{id}","timeout":"0s"}}"#)),
    )
    .await;
    wait(&d, &id, "state=stopped&state=suspended&timeout=60").await;
    let start = decoded(&d, Method::POST, &format!("{mid}/start"), None, None).await;
    assert_eq!(start["previous_state"], "stopped", "{start}");
    wait(&d, &id, "state=started&timeout=60").await;
    call(&d, Method::POST, &format!("{mid}/suspend"), None, None).await;
    wait(&d, &id, "state=suspended&timeout=60").await;
    let start = decoded(&d, Method::POST, &format!("{mid}/start"), None, None).await;
    assert_eq!(start["previous_state"], "suspended", "{start}");
    wait(&d, &id, "state=started&timeout=60").await;
    call(
        &d,
        Method::POST,
        &format!("{mid}/signal"),
        None,
        Some(r#"{"signal":9}"#.into()),
    )
    .await;
    wait(&d, &id, "state=stopped&timeout=60").await;

    // Volumes: CreateVolume (every pointer null), GetAllVolumes, GetVolume, UpdateVolume,
    // ExtendVolume, CreateVolumeSnapshot (no body), GetVolumeSnapshots, DeleteVolume (decoded).
    let v = "/v1/apps/flaps/volumes";
    let vol = decoded(
        &d,
        Method::POST,
        v,
        None,
        Some(format!(
            r#"{{"name":"data","region":"{region}","size_gb":1,"encrypted":null,"require_unique_zone":null,"unique_zone_app_wide":null,"snapshot_retention":null,"auto_backup_enabled":null,"fstype":null,"snapshot_id":null,"source_volume_id":null,"compute":null}}"#
        )),
    )
    .await;
    let vol_id = vol["id"].as_str().unwrap().to_string();
    let vid = format!("{v}/{vol_id}");
    let all = decoded(&d, Method::GET, v, None, None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    decoded(&d, Method::GET, &vid, None, None).await;
    let upd = decoded(
        &d,
        Method::PUT,
        &vid,
        None,
        Some(r#"{"snapshot_retention":10,"auto_backup_enabled":null}"#.into()),
    )
    .await;
    assert_eq!(upd["snapshot_retention"], 10, "{upd}");
    let ext = decoded(
        &d,
        Method::PUT,
        &format!("{vid}/extend"),
        None,
        Some(r#"{"size_gb":2}"#.into()),
    )
    .await;
    assert_eq!(ext["volume"]["size_gb"], 2, "{ext}");
    assert!(ext["needs_restart"].is_boolean(), "{ext}");
    call(&d, Method::POST, &format!("{vid}/snapshots"), None, None).await;
    let snaps = decoded(&d, Method::GET, &format!("{vid}/snapshots"), None, None).await;
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");
    let gone = decoded(&d, Method::DELETE, &vid, None, None).await;
    assert_eq!(gone["id"], vol_id.as_str(), "{gone}");

    // Secrets: SetAppSecret, UpdateAppSecrets (null deletes), ListAppSecrets and GetAppSecrets
    // with flaps' `version`, DeleteAppSecret.
    let s = "/v1/apps/flaps/secrets";
    let set = decoded(
        &d,
        Method::POST,
        &format!("{s}/FOO"),
        None,
        Some(r#"{"value":"s3cr3t"}"#.into()),
    )
    .await;
    assert!(set["version"].is_u64(), "{set}");
    let upd = decoded(
        &d,
        Method::POST,
        s,
        None,
        Some(r#"{"values":{"BAR":"x","OLD":null}}"#.into()),
    )
    .await;
    let secrets_version = upd["version"].as_u64().unwrap();
    let list = decoded(
        &d,
        Method::GET,
        &format!("{s}?version={secrets_version}"),
        None,
        None,
    )
    .await;
    assert_eq!(list["secrets"].as_array().map(Vec::len), Some(2), "{list}");
    let one = decoded(
        &d,
        Method::GET,
        &format!("{s}/FOO?version={secrets_version}"),
        None,
        None,
    )
    .await;
    assert_eq!(one["name"], "FOO", "{one}");
    let del = decoded(&d, Method::DELETE, &format!("{s}/BAR"), None, None).await;
    assert!(del["version"].as_u64().unwrap() > secrets_version, "{del}");

    // Certificates: CreateCustomCertificate, ListCertificates (no query, then flaps' sorted
    // options), GetCertificate, CheckCertificate (no body), DeleteCustomCertificate,
    // DeleteCertificate.
    let dir = tempfile::tempdir().unwrap();
    let c = "/v1/apps/flaps/certificates";
    for host in ["shop.flaps.test", "www.flaps.test"] {
        let (cert, key) = certificate_for(dir.path(), host);
        let body = serde_json::json!({"hostname": host, "fullchain": cert, "private_key": key});
        let created = decoded(
            &d,
            Method::POST,
            &format!("{c}/custom"),
            None,
            Some(body.to_string()),
        )
        .await;
        assert_eq!(created["hostname"], host, "{created}");
    }
    for query in ["", "?limit=10"] {
        let list = decoded(&d, Method::GET, &format!("{c}{query}"), None, None).await;
        assert_eq!(
            list["certificates"].as_array().map(Vec::len),
            Some(2),
            "{list}"
        );
    }
    decoded(&d, Method::GET, &format!("{c}/shop.flaps.test"), None, None).await;
    decoded(
        &d,
        Method::POST,
        &format!("{c}/shop.flaps.test/check"),
        None,
        None,
    )
    .await;
    call(
        &d,
        Method::DELETE,
        &format!("{c}/shop.flaps.test/custom"),
        None,
        None,
    )
    .await;
    call(
        &d,
        Method::DELETE,
        &format!("{c}/www.flaps.test"),
        None,
        None,
    )
    .await;

    // IP assignments need the proxy (networking): flaps' AssignIP body is replayed in
    // tests/proxy.rs.

    // Calls Hangar does not serve answer so in words, not as a missing app.
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/apps/flaps/certificates/acme",
            Some(r#"{"hostname":"a.flaps.test"}"#),
        ),
        (
            Method::POST,
            "/v1/platform/placements",
            Some(
                r#"{"compute":null,"region":"","count":0,"volume_name":"","volume_size_bytes":0,"weights":null,"org_slug":"personal"}"#,
            ),
        ),
        (Method::GET, "/v1/apps/flaps/secretkeys", None),
        (
            Method::POST,
            "/v1/postgres",
            Some(
                r#"{"org_slug":"personal","region":"ord","plan":"basic","postgis_enabled":false}"#,
            ),
        ),
    ] {
        let r = d
            .client
            .raw(
                method.clone(),
                path,
                &[],
                body.map(|b| b.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 501, "{method} {path}: {}", r.text());
        assert!(
            error_text(&r).contains("Hangar"),
            "{method} {path}: {}",
            r.text()
        );
    }

    // Destroy (`?kill=`), then DeleteApp.
    call(&d, Method::DELETE, &format!("{mid}?kill=false"), None, None).await;
    let second = decoded(
        &d,
        Method::POST,
        m,
        None,
        Some(format!(
            r#"{{"config":{{"init":{{"cmd":["sleep","3600"]}},"image":"{image}"}},"skip_secrets":false}}"#
        )),
    )
    .await;
    let second = second["id"].as_str().unwrap().to_string();
    wait(&d, &second, "state=started&timeout=60").await;
    call(
        &d,
        Method::DELETE,
        &format!("{m}/{second}?kill=true"),
        None,
        None,
    )
    .await;
    call(&d, Method::DELETE, "/v1/apps/flaps", None, None).await;
    assert_eq!(d.get("/v1/apps/flaps").await.status, 404);
}
