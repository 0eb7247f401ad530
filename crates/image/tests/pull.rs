//! Pulls from the local registries started by `scripts/registry start && scripts/registry push`
//! (HANGAR_TEST_REGISTRY / HANGAR_TEST_REGISTRY_AUTH), and from a tampering server in-process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::*;
use hangar_image::{
    pull, Error, ImageStore, Platform, Progress, PullOptions, Reference, RegistryOptions,
};

/// The registry a test pulls from; these tests are `#[ignore]`d, so they run only when asked
/// for, and then a missing registry is a failure, not a silent pass.
fn registry(var: &str) -> String {
    match std::env::var(var) {
        Ok(r) if !r.is_empty() => r,
        _ => panic!("{var} not set: run scripts/registry start && scripts/registry push"),
    }
}

fn opts() -> PullOptions {
    PullOptions {
        registry: RegistryOptions {
            ignore_docker_config: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn store() -> (tempfile::TempDir, Arc<ImageStore>) {
    let t = tempfile::tempdir().unwrap();
    let s = Arc::new(ImageStore::open(t.path().join("store")).unwrap());
    (t, s)
}

#[tokio::test]
#[ignore = "needs root and the loopback registries (scripts/registry start && push; .ci/run runs it)"]
async fn pull_anonymous_with_progress_and_cache() {
    let reg = registry("HANGAR_TEST_REGISTRY");
    assert!(is_root(), "needs root");
    let (_t, s) = store();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut o = opts();
    o.progress = Some(Arc::new(move |p| ev.lock().unwrap().push(p)));
    let r = Reference::parse(&format!("{reg}/hangar/busybox")).unwrap();
    let rec = pull(&s, &r, &o).await.unwrap();
    assert_eq!(rec.references, vec![r.to_string()]);
    let dir = &s.layer_dirs(&rec.manifest_digest).unwrap()[0];
    assert!(dir.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(dir.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    {
        let ev = events.lock().unwrap();
        assert!(matches!(ev.first(), Some(Progress::Resolved { .. })));
        assert!(ev
            .iter()
            .any(|p| matches!(p, Progress::LayerBytes { done, total, .. } if done == total)));
        assert!(matches!(ev.last(), Some(Progress::Done { .. })));
    }
    events.lock().unwrap().clear();
    // Again: nothing downloaded.
    let again = pull(&s, &r, &o).await.unwrap();
    assert_eq!(again.manifest_digest, rec.manifest_digest);
    let ev = events.lock().unwrap();
    assert!(
        !ev.iter().any(|p| matches!(p, Progress::LayerBytes { .. })),
        "{ev:?}"
    );
    assert!(ev.iter().any(|p| matches!(p, Progress::LayerCached { .. })));
}

#[tokio::test]
#[ignore = "needs root and the loopback registries (scripts/registry start && push; .ci/run runs it)"]
async fn pull_with_basic_auth_from_docker_config() {
    let reg = registry("HANGAR_TEST_REGISTRY_AUTH");
    assert!(is_root(), "needs root");
    let (t, s) = store();
    let r = Reference::parse(&format!("{reg}/hangar/config:latest")).unwrap();
    let err = pull(&s, &r, &opts()).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    let cfg = t.path().join("config.json");
    let enc = base64::engine::general_purpose::STANDARD.encode("hangar:hangar");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"http://{reg}":{{"auth":"{enc}"}}}}}}"#),
    )
    .unwrap();
    let mut o = opts();
    o.registry = RegistryOptions {
        docker_config: Some(cfg),
        ..Default::default()
    };
    let rec = pull(&s, &r, &o).await.unwrap();
    let d = s.inspect(&rec.manifest_digest.to_string()).unwrap();
    assert_eq!(d.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(d.config.user.as_deref(), Some("app"));
    assert_eq!(d.config.working_dir.as_deref(), Some("/www"));
    assert_eq!(d.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(d.config.exposed_ports, vec!["8080/tcp"]);
    assert!(d.config.env.contains(&"GREETING=hangar".to_string()));
}

#[tokio::test]
#[ignore = "needs root and the loopback registries (scripts/registry start && push; .ci/run runs it)"]
async fn pull_index_selects_platform() {
    let reg = registry("HANGAR_TEST_REGISTRY");
    assert!(is_root(), "needs root");
    let (_t, s) = store();
    let r = Reference::parse(&format!("{reg}/hangar/multiarch")).unwrap();
    let rec = pull(&s, &r, &opts()).await.unwrap();
    assert_eq!(rec.architecture, host_arch());
    assert!(s.layer_dirs(&rec.manifest_digest).unwrap()[0]
        .join("bin/busybox")
        .exists());
    let mut o = opts();
    o.platform = Platform::new("linux", "s390x");
    let err = pull(&s, &r, &o).await.unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
}

#[tokio::test]
#[ignore = "needs root and the loopback registries (scripts/registry start && push; .ci/run runs it)"]
async fn pulled_whiteouts_through_overlay() {
    let reg = registry("HANGAR_TEST_REGISTRY");
    assert!(is_root(), "needs root");
    let (t, s) = store();
    let rec = pull(
        &s,
        &Reference::parse(&format!("{reg}/hangar/layers")).unwrap(),
        &opts(),
    )
    .await
    .unwrap();
    let spec = s
        .prepare_rootfs(&rec.manifest_digest, &t.path().join("c"), None)
        .unwrap();
    let target = t.path().join("root");
    std::fs::create_dir(&target).unwrap();
    hangar_image::mount_rootfs(&spec, &target, None).unwrap();
    let seen = (
        target.join("www/index.html").exists(),
        target.join("www/extra.html").exists(),
        target.join("data/a").exists(),
        target.join("data/c").exists(),
        target.join("bin/busybox").exists(),
    );
    hangar_image::unmount_rootfs(&target).unwrap();
    assert_eq!(seen, (false, true, false, true, true));
}

/// Serves a valid manifest and config but a layer whose bytes differ from its digest.
#[tokio::test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
async fn tampered_blob_rejected() {
    assert!(is_root(), "needs root");
    let t = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&t.path().join("layout"));
    let img = l.image(
        &[RawTar::new().file("f", b"good").finish()],
        serde_json::json!({}),
        host_arch(),
    );
    l.add(&img, "x");
    let layer_digest = img.manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blobs = t.path().join("layout/blobs/sha256");
    let good = std::fs::read(blobs.join(&layer_digest[7..])).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x55;
    std::fs::write(blobs.join(&layer_digest[7..]), &bad).unwrap();
    let manifest = serde_json::to_vec(&img.manifest).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let blobs2 = blobs.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut c) = conn else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(c.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (ctype, body) = if path.contains("/manifests/") {
                (
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone(),
                )
            } else if let Some(d) = path.split("/blobs/sha256:").nth(1) {
                (
                    "application/octet-stream",
                    std::fs::read(blobs2.join(d)).unwrap_or_default(),
                )
            } else {
                ("application/json", b"{}".to_vec())
            };
            let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = c.write_all(&body);
        }
    });
    let (_t2, s) = store();
    let r = Reference::parse(&format!("{addr}/evil/img:latest")).unwrap();
    let err = pull(&s, &r, &opts()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer_digest), "{err}");
    assert!(!s.has_blob(&hangar_image::Digest::parse(&layer_digest).unwrap()));
    assert_eq!(
        std::fs::read_dir(s.root().join("tmp")).unwrap().count(),
        0,
        "no partial blob kept"
    );
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn pull_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let (_t, s) = store();
    let r = Reference::parse("localhost:1/x").unwrap();
    let o = opts();
    assert_send(pull(&s, &r, &o));
}

/// Docker Hub's flow against a real registry that accepts only bearer tokens: the pull follows
/// the `WWW-Authenticate` challenge to the token server (scripts/token-server) anonymously, and
/// with credentials from the docker config when there are some.
#[tokio::test]
#[ignore = "needs root and the loopback registries (scripts/registry start && push; .ci/run runs it)"]
async fn pull_with_bearer_token_flow() {
    let reg = registry("HANGAR_TEST_REGISTRY_TOKEN");
    assert!(is_root(), "needs root");
    // The registry really demands a token.
    let resp = reqwest::get(format!("http://{reg}/v2/hangar/busybox/manifests/latest"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");

    let (t, s) = store();
    let r = Reference::parse(&format!("{reg}/hangar/busybox")).unwrap();
    let rec = pull(&s, &r, &opts()).await.unwrap();
    assert!(s.layer_dirs(&rec.manifest_digest).unwrap()[0]
        .join("bin/busybox")
        .is_file());

    // Credentials go to the token server: right ones work, wrong ones are an auth error.
    let cfg = t.path().join("config.json");
    let write_cfg = |creds: &str| {
        let enc = base64::engine::general_purpose::STANDARD.encode(creds);
        std::fs::write(
            &cfg,
            format!(r#"{{"auths":{{"http://{reg}":{{"auth":"{enc}"}}}}}}"#),
        )
        .unwrap();
    };
    let mut o = opts();
    o.registry = RegistryOptions {
        docker_config: Some(cfg.clone()),
        ..Default::default()
    };
    write_cfg("hangar:hangar");
    let r = Reference::parse(&format!("{reg}/hangar/config")).unwrap();
    let rec = pull(&s, &r, &o).await.unwrap();
    assert_eq!(
        s.inspect(&rec.manifest_digest.to_string())
            .unwrap()
            .config
            .user
            .as_deref(),
        Some("app")
    );
    write_cfg("hangar:wrong");
    let r = Reference::parse(&format!("{reg}/hangar/layers")).unwrap();
    let err = pull(&s, &r, &o).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
}

/// A layer compressed with zstd (`…tar+zstd`) is fetched, verified and unpacked into the same
/// files as its gzip twin, and both images then share the one unpacked layer.
#[tokio::test]
#[ignore = "needs root and the loopback registries (scripts/registry start && push; .ci/run runs it)"]
async fn pull_zstd_layers() {
    let reg = registry("HANGAR_TEST_REGISTRY");
    assert!(is_root(), "needs root");
    let (_t, s) = store();
    let zstd = pull(
        &s,
        &Reference::parse(&format!("{reg}/hangar/busybox-zstd")).unwrap(),
        &opts(),
    )
    .await
    .unwrap();
    let dir = s.layer_dirs(&zstd.manifest_digest).unwrap()[0].clone();
    assert_eq!(
        std::fs::read(dir.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("www/index.html")).unwrap(),
        "<h1>hangar busybox</h1>\n"
    );
    let gzip = pull(
        &s,
        &Reference::parse(&format!("{reg}/hangar/busybox")).unwrap(),
        &opts(),
    )
    .await
    .unwrap();
    assert_ne!(gzip.manifest_digest, zstd.manifest_digest);
    assert_eq!(s.layer_dirs(&gzip.manifest_digest).unwrap()[0], dir);
}

/// An unreachable registry names the cause, not just "error sending request".
#[tokio::test]
async fn unreachable_registry_names_the_cause() {
    let (_t, s) = store();
    // Nothing listens on port 1 of loopback.
    let r = Reference::parse("127.0.0.1:1/hangar/busybox").unwrap();
    let err = pull(&s, &r, &opts()).await.unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("refused") || err.to_lowercase().contains("connect"),
        "{err}"
    );
}
