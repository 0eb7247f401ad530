//! Builds: `hangar machine run .` builds the Dockerfile with buildah, imports the image as
//! `<app>:deployment-<ULID>` and runs it; a failing step or a missing Dockerfile stops before
//! anything is created.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn test_machine_run_dot_builds_the_dockerfile() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("built").await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "copied\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\nARG GREETING=none\nCOPY hello.txt /hello.txt\n\
             RUN echo \"built $GREETING\" > /built.txt\nCMD [\"sleep\", \"600\"]\n",
            test_image()
        ),
    )
    .unwrap();
    let out = d.cli_in(
        ctx.path(),
        &[
            "machine",
            "run",
            ".",
            "-a",
            "built",
            "--build-arg",
            "GREETING=hi",
            "--detach",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("STEP") && stderr.contains("Building built:deployment-"),
        "{stderr}"
    );
    let machines: Vec<Value> = d.get("/v1/apps/built/machines").await.json().unwrap();
    assert_eq!(machines.len(), 1);
    let m = machines[0]["id"].as_str().unwrap().to_string();
    let image = machines[0]["config"]["image"].as_str().unwrap();
    assert!(image.starts_with("built:deployment-"), "{image}");
    d.wait_state("built", &m, "started").await;
    let r = d
        .post(
            &format!("/v1/apps/built/machines/{m}/exec"),
            json!({"command": ["cat", "/hello.txt", "/built.txt"]}),
        )
        .await;
    assert_eq!(r.json::<Value>().unwrap()["stdout"], "copied\nbuilt hi\n");

    // A failing step: a non-zero exit naming it, and no machine.
    std::fs::write(
        ctx.path().join("Dockerfile.bad"),
        format!("FROM {}\nRUN echo about to fail && false\n", test_image()),
    )
    .unwrap();
    let out = d.cli_in(
        ctx.path(),
        &[
            "machine",
            "run",
            "-a",
            "built",
            "--dockerfile",
            "Dockerfile.bad",
            "--detach",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("false") && stderr.contains("the build failed"),
        "{stderr}"
    );
    // The failed build left nothing mounted in buildah's storage.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains("/hangar/buildah/overlay/"), "{mounts}");
    // No Dockerfile: one line, nothing made.
    let empty = tempfile::tempdir().unwrap();
    let out = d.cli_in(empty.path(), &["machine", "run", ".", "-a", "built"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no Dockerfile"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let machines: Vec<Value> = d.get("/v1/apps/built/machines").await.json().unwrap();
    assert_eq!(machines.len(), 1, "{machines:?}");
    d.destroy_machine("built", &m, true).await;
}

/// `FROM` an image only Hangar's store has (imported under a name no registry serves: its
/// loopback registry port has nothing listening).
#[tokio::test]
async fn test_a_build_starts_from_an_image_in_the_store() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("fromstore").await;
    let work = tempfile::tempdir().unwrap();
    // Into the store under a private name: pull, export, import with a tag.
    let pull = d.cli(&["image", "pull", &test_image()]);
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let archive = work.path().join("busybox.tar");
    let mut bytes = Vec::new();
    d.client
        .get_streaming(
            &format!(
                "/hangar/v1/images/export?ref={}",
                hangar_client::encode(&test_image())
            ),
            |chunk| {
                bytes.extend_from_slice(chunk);
                true
            },
        )
        .await
        .unwrap();
    std::fs::write(&archive, bytes).unwrap();
    let private = "127.0.0.1:5999/private/base:v1";
    let out = d.cli(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--tag",
        private,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {private}\nRUN echo from-store > /marker\nCMD [\"sleep\", \"600\"]\n"),
    )
    .unwrap();
    let out = d.cli_in(
        &ctx,
        &["machine", "run", ".", "-a", "fromstore", "--detach"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("from the image store"), "{stderr}");
    let machines: Vec<Value> = d.get("/v1/apps/fromstore/machines").await.json().unwrap();
    let m = machines[0]["id"].as_str().unwrap().to_string();
    d.wait_state("fromstore", &m, "started").await;
    let r = d
        .post(
            &format!("/v1/apps/fromstore/machines/{m}/exec"),
            json!({"command": ["cat", "/marker"]}),
        )
        .await;
    assert_eq!(r.json::<Value>().unwrap()["stdout"], "from-store\n");
    d.destroy_machine("fromstore", &m, true).await;
}
