//! `hangar deploy`: the seed's fly.toml + cli-config.json (nginx in front, the built image as
//! the `echo` container) comes up healthy; a second deploy rolls the machines to a new version;
//! a version that fails its check stops the deploy with its logs; bad fly.toml files are
//! refused before anything is made.

mod common;

use common::*;
use serde_json::{json, Value};

/// The echo app: busybox httpd on port 80 serving `page`.
fn dockerfile(page: &str, cmd: &str) -> String {
    format!(
        "FROM {}\nRUN mkdir -p /www && echo '{page}' > /www/index.html\nCMD {cmd}\n",
        test_image()
    )
}

const HTTPD: &str = r#"["httpd", "-f", "-p", "80", "-h", "/www"]"#;

async fn page_of(d: &Daemon, id: &str) -> String {
    // Through nginx (port 8080), from the echo container (same network namespace).
    let r = d
        .post(
            &format!("/v1/apps/seed/machines/{id}/exec"),
            json!({"container": "echo", "command": ["wget", "-qO-", "http://127.0.0.1:8080/"]}),
        )
        .await;
    let v: Value = r.json().unwrap();
    v["stdout"].as_str().unwrap_or_default().trim().to_string()
}

/// The page once the machine serves one: `immediate` deploys do not wait for health checks
/// (as flyctl's), so nginx (which waits for echo to turn healthy) comes up a moment later.
async fn page_once_served(d: &Daemon, id: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let page = page_of(d, id).await;
        if !page.is_empty() || std::time::Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn machines(d: &Daemon) -> Vec<Value> {
    d.get("/v1/apps/seed/machines").await.json().unwrap()
}

#[tokio::test]
async fn test_deploy_the_seeds_multi_container_app_and_roll_it() {
    let d = Daemon::start_with_runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let nginx = format!("{}/hangar/nginx:latest", registry());
    std::fs::write(
        p.join("cli-config.json"),
        serde_json::to_string_pretty(&json!({"containers": [
            {"name": "nginx", "image": nginx,
             "files": [{"guest_path": "/etc/nginx/conf.d/default.conf", "local_path": "nginx.conf"}],
             "depends_on": [{"name": "echo", "condition": "healthy"}]},
            {"name": "echo", "image": "ealen/echo-server",
             "healthchecks": [{"exec": {"command": ["wget", "-q", "--spider", "http://localhost"]},
                               "interval": 1, "timeout": 2}]}
        ]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        p.join("nginx.conf"),
        "server {\n  listen 8080;\n  location / {\n    proxy_pass http://127.0.0.1:80;\n  }\n}\n",
    )
    .unwrap();
    std::fs::write(
        p.join("fly.toml"),
        "app = 'seed'\n\n[experimental]\nmachine_config = 'cli-config.json'\ncontainer = 'echo'\n\n\
         [http_service]\ninternal_port = 8080\n",
    )
    .unwrap();
    std::fs::write(p.join("Dockerfile"), dockerfile("hello v1", HTTPD)).unwrap();

    // First deploy: the app is made, two machines (services and --ha), both healthy.
    let out = cli_ok(&d.cli_in(p, &["deploy", "--wait-timeout", "60s"]));
    assert!(out.contains("deployed"), "{out}");
    let ms = machines(&d).await;
    assert_eq!(ms.len(), 2, "{ms:?}");
    for m in &ms {
        let c = &m["config"];
        assert_eq!(c["metadata"]["fly_platform_version"], "v2");
        assert_eq!(c["metadata"]["fly_process_group"], "app");
        assert_eq!(c["metadata"]["fly_release_version"], "1");
        assert_eq!(
            c["containers"][0]["image"],
            nginx.as_str(),
            "nginx kept its image"
        );
        let built = c["containers"][1]["image"].as_str().unwrap();
        assert!(
            built.starts_with("seed:deployment-"),
            "the echo container runs the build: {built}"
        );
        assert_eq!(m["state"], "started");
        let id = m["id"].as_str().unwrap();
        assert_eq!(page_of(&d, id).await, "hello v1");
    }
    let status = cli_ok(&d.cli_in(p, &["status"]));
    assert!(
        status.contains("PROCESS") && status.matches(" started ").count() == 2,
        "{status}"
    );

    // A change rolls both machines to version 2.
    let before: Vec<String> = ms
        .iter()
        .map(|m| m["instance_id"].as_str().unwrap().to_string())
        .collect();
    std::fs::write(p.join("Dockerfile"), dockerfile("hello v2", HTTPD)).unwrap();
    cli_ok(&d.cli_in(p, &["deploy", "--wait-timeout", "60s"]));
    let ms = machines(&d).await;
    assert_eq!(ms.len(), 2);
    for m in &ms {
        assert_eq!(m["config"]["metadata"]["fly_release_version"], "2");
        assert!(!before.contains(&m["instance_id"].as_str().unwrap().to_string()));
        assert_eq!(page_of(&d, m["id"].as_str().unwrap()).await, "hello v2");
    }

    // A version whose check fails: the first machine is tried, the deploy stops with its logs,
    // the other machine still serves version 2.
    std::fs::write(
        p.join("Dockerfile"),
        dockerfile(
            "hello v3",
            r#"["sh", "-c", "echo v3 is broken; sleep 600"]"#,
        ),
    )
    .unwrap();
    let out = d.cli_in(p, &["deploy", "--wait-timeout", "8s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("did not become healthy"), "{err}");
    assert!(err.contains("v3 is broken"), "its logs: {err}");
    let ms = machines(&d).await;
    let versions: Vec<&str> = ms
        .iter()
        .map(|m| {
            m["config"]["metadata"]["fly_release_version"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(
        versions.contains(&"3") && versions.contains(&"2"),
        "{versions:?}"
    );
    let v2 = ms
        .iter()
        .find(|m| m["config"]["metadata"]["fly_release_version"] == "2")
        .unwrap();
    assert_eq!(page_of(&d, v2["id"].as_str().unwrap()).await, "hello v2");

    // --image skips the build; `immediate` updates everything at once. The image is version
    // 2's (its echo serves port 80 and turns healthy): a bare busybox image's `sh` ends at
    // once, and whether a start saw its echo running before that was a race.
    let v2_image = v2["config"]["containers"][1]["image"]
        .as_str()
        .expect("version 2's echo image")
        .to_string();
    let out = cli_ok(&d.cli_in(
        p,
        &["deploy", "--image", &v2_image, "--strategy", "immediate"],
    ));
    assert!(!out.contains("Building"), "{out}");
    for m in machines(&d).await {
        assert_eq!(m["config"]["metadata"]["fly_release_version"], "4");
        assert_eq!(m["config"]["containers"][1]["image"], v2_image.as_str());
        assert_eq!(
            page_once_served(&d, m["id"].as_str().unwrap()).await,
            "hello v2"
        );
    }
    for m in machines(&d).await {
        d.destroy_machine("seed", m["id"].as_str().unwrap(), true)
            .await;
    }
}

#[tokio::test]
async fn test_bad_fly_toml_files_are_refused_before_anything_is_made() {
    let d = Daemon::start_with_runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("Dockerfile"), dockerfile("x", HTTPD)).unwrap();
    // (fly.toml, files beside it, what the error says)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            "app = 'bad'\n[http_service\ninternal_port = 8080\n",
            &[],
            "fly.toml, line 2",
        ),
        (
            "app = 'bad'\nmachine_config = 'c.json'\n",
            &[("c.json", "{\"guest\": {}}")],
            "no containers",
        ),
        (
            "app = 'bad'\nmachine_config = 'c.json'\ncontainer = 'web'\n",
            &[(
                "c.json",
                "{\"containers\": [{\"name\": \"app\", \"image\": \"x\"}]}",
            )],
            "container \"web\" not found",
        ),
        (
            "app = 'bad'\nmachine_config = 'c.yaml'\n",
            &[],
            "invalid machine config source",
        ),
        (
            "app = 'bad'\n[build]\ndockerfile = 'Nope.dockerfile'\n",
            &[],
            "no Dockerfile",
        ),
    ];
    for (toml, files, expected) in cases {
        std::fs::write(p.join("fly.toml"), toml).unwrap();
        for (name, text) in files {
            std::fs::write(p.join(name), text).unwrap();
        }
        let out = d.cli_in(p, &["deploy"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(err.contains(expected), "{toml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let r = d.get("/v1/apps/bad").await;
    assert!(
        r.status == 404 || d.get("/v1/apps/bad/machines").await.text() == "[]",
        "nothing made: {}",
        r.text()
    );
}
