//! `hangar doctor` reads this host as the daemon would and names what is missing.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn doctor(data_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["doctor", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run hangar doctor")
}

#[test]
#[ignore = "needs root (run as root: .ci/run passes --include-ignored)"]
fn doctor_passes_here_and_names_a_closed_data_dir() {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = doctor(&t.path().join("data"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["root", "cgroups", "openat2", "overlay", "data dir"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{text}"
        );
    }
    // Machines run as unprivileged uids: a data dir they cannot reach is a failure.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = doctor(&t.path().join("data"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("data dir")),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 required check(s) failed"));
}
