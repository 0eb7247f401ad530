//! Interactive consoles: `POST /hangar/v1/apps/{app}/machines/{id}/console` (HTTP upgrade to
//! Pilot's framed pty stream) against a real daemon and the loopback test registry, and
//! `hangar machine run --shell` driven through a real terminal (tmux).

mod common;

use common::test_image as image;

use std::time::{Duration, Instant};

use common::Daemon;
use hangar_client::{ConsoleFrame, ConsoleOptions, ConsoleStream};
use serde_json::{json, Value};
use tokio::io::{ReadHalf, WriteHalf};

async fn started_machine(d: &Daemon, app: &str, extra: Value) -> String {
    let mut body = json!({"config": {"image": image(), "init": {"exec": ["/bin/sleep", "inf"]}}});
    common::merge(&mut body, extra);
    let id = d.launch(app, body).await;
    d.wait_state(app, &id, "started").await;
    id
}

/// Reads frames until the accumulated terminal output contains `needle` (or an exit frame).
async fn read_until(
    r: &mut ReadHalf<ConsoleStream>,
    out: &mut String,
    needle: &str,
) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ConsoleFrame::read(r))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; output so far: {out:?}"))
            .expect("read frame");
        match frame {
            Some(ConsoleFrame::Data(d)) => out.push_str(&String::from_utf8_lossy(&d)),
            Some(ConsoleFrame::Exit(code)) => return Some(code),
            Some(other) => panic!("unexpected frame {other:?}"),
            None => panic!("stream ended waiting for {needle:?}; output: {out:?}"),
        }
    }
    None
}

async fn send(w: &mut WriteHalf<ConsoleStream>, f: ConsoleFrame) {
    f.write(w).await.expect("write frame");
}

#[tokio::test]
async fn console_runs_a_shell_on_a_pty() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("con").await;
    let id = started_machine(&d, "con", json!({})).await;

    let stream = d
        .client
        .console(
            "con",
            &id,
            &ConsoleOptions {
                command: Some("/bin/sh".into()),
                rows: Some(30),
                cols: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("console");
    let (mut r, mut w) = tokio::io::split(stream);
    let mut out = String::new();

    send(
        &mut w,
        ConsoleFrame::Data(b"echo hello-$((40+2))\n".to_vec()),
    )
    .await;
    assert_eq!(read_until(&mut r, &mut out, "hello-42\r\n").await, None);

    // The initial size, then a resize, as the command sees them on its terminal.
    out.clear();
    send(&mut w, ConsoleFrame::Data(b"stty size; tty\n".to_vec())).await;
    read_until(&mut r, &mut out, "30 100\r\n").await;
    read_until(&mut r, &mut out, "/dev/pts/").await;
    out.clear();
    send(
        &mut w,
        ConsoleFrame::Resize {
            rows: 50,
            cols: 132,
        },
    )
    .await;
    send(&mut w, ConsoleFrame::Data(b"stty size\n".to_vec())).await;
    read_until(&mut r, &mut out, "50 132\r\n").await;

    // Ctrl-C reaches the foreground job through the pty's line discipline.
    out.clear();
    send(
        &mut w,
        ConsoleFrame::Data(b"sleep 30; echo slept\n".to_vec()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut w, ConsoleFrame::Data(vec![3])).await;
    send(
        &mut w,
        ConsoleFrame::Data(b"echo after-$((1+1))\n".to_vec()),
    )
    .await;
    read_until(&mut r, &mut out, "after-2\r\n").await;
    assert!(
        !out.contains("\nslept"),
        "sleep was not interrupted: {out:?}"
    );

    out.clear();
    send(&mut w, ConsoleFrame::Data(b"exit 3\n".to_vec())).await;
    let code = read_until(&mut r, &mut out, "\u{0}never").await;
    assert_eq!(code, Some(3), "output: {out:?}");
}

#[tokio::test]
async fn console_errors_are_http_errors() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("conerr").await;
    let id = started_machine(&d, "conerr", json!({})).await;
    let err = |opts: ConsoleOptions| {
        let c = d.client.clone();
        let id = id.clone();
        async move { c.console("conerr", &id, &opts).await.expect_err("an error") }
    };
    let e = err(ConsoleOptions {
        container: Some("nope".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404), "{e}");
    let e = err(ConsoleOptions {
        user: Some("nobody-here".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
    let e = err(ConsoleOptions {
        command: Some("/no/such/shell".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
    // A plain POST without the upgrade is refused.
    let r = d
        .post(
            &format!("/hangar/v1/apps/conerr/machines/{id}/console"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 426, "{}", r.text());
    // So is a missing token.
    let anon = hangar_client::Client::new(hangar_client::Endpoint::Unix(d.socket.clone()), None);
    let e = anon
        .console("conerr", &id, &ConsoleOptions::default())
        .await
        .expect_err("unauthorized");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "{e}");
}

#[tokio::test]
async fn console_as_another_user_and_tty_main_process() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("conuser").await;
    let id = started_machine(
        &d,
        "conuser",
        json!({"config": {"init": {"tty": true, "exec": ["/bin/sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo main-on-tty; echo \"tty=$(tty) size=$(stty size)\"; echo main-out; sleep inf"]}}}),
    )
    .await;
    let stream = d
        .client
        .console(
            "conuser",
            &id,
            &ConsoleOptions {
                user: Some("nobody".into()),
                ..Default::default()
            },
        )
        .await
        .expect("console");
    let (mut r, mut w) = tokio::io::split(stream);
    let mut out = String::new();
    send(
        &mut w,
        ConsoleFrame::Data(b"id -u; echo $HOME; exit\n".to_vec()),
    )
    .await;
    let code = read_until(&mut r, &mut out, "\u{0}never").await;
    assert_eq!(code, Some(0), "output: {out:?}");
    assert!(out.contains("65534\r\n"), "not nobody: {out:?}");

    // init.tty: the main process has a terminal and its output reaches the log.
    let log = d
        .data_dir
        .join("machines")
        .join(&id)
        .join("run/logs/app.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stdout main-out\n") {
            assert!(text.contains("stdout main-on-tty\n"), "no tty: {text}");
            // The terminal is one of the container's own /dev/pts, with a sane size.
            assert!(text.contains("tty=/dev/pts/0 size=24 80"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "log: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs tmux on a private server socket.
fn tmux(sock: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(args)
        .output()
        .expect("run tmux (apt-get install tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the pane shows `needle`; returns the pane text.
async fn pane_until(sock: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = tmux(
            sock,
            &["capture-pane", "-p", "-J", "-S", "-200", "-t", "shell"],
        );
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the pane:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cli_run_shell_through_a_real_terminal() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("shellapp").await;
    let sock = d.tmp.path().join("tmux.sock");
    let script = format!(
        "{} machine run --shell {} -a shellapp; echo CLI-EXIT=$?; \
         stty -a | grep -q -- -icanon || echo TTY-RESTORED; sleep 600",
        common::hangar_bin(),
        image()
    );
    let env_url = format!("HANGAR_API_URL=unix://{}", d.socket.display());
    let env_token = format!("HANGAR_API_TOKEN={}", d.token);
    tmux(
        &sock,
        &[
            "new-session",
            "-d",
            "-s",
            "shell",
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            &env_url,
            "-e",
            &env_token,
            "sh",
            "-c",
            &script,
        ],
    );
    struct Kill<'a>(&'a std::path::Path);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            tmux(self.0, &["kill-server"]);
        }
    }
    let _kill = Kill(&sock);

    pane_until(&sock, "/ # ").await;
    tmux(
        &sock,
        &["send-keys", "-t", "shell", "echo out-$((6*7))", "Enter"],
    );
    pane_until(&sock, "out-42").await;
    tmux(&sock, &["send-keys", "-t", "shell", "stty size", "Enter"]);
    pane_until(&sock, "40 120").await;
    // A window change reaches the remote terminal (SIGWINCH → resize frame).
    tmux(
        &sock,
        &["resize-window", "-t", "shell", "-x", "100", "-y", "30"],
    );
    // The resize travels as SIGWINCH → resize frame → remote pty; ask until it has arrived.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tmux(&sock, &["send-keys", "-t", "shell", "stty size", "Enter"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tmux(&sock, &["capture-pane", "-p", "-t", "shell"]).contains("30 100") {
            break;
        }
        assert!(Instant::now() < deadline, "the resize never arrived");
    }
    tmux(&sock, &["send-keys", "-t", "shell", "exit 4", "Enter"]);
    let text = pane_until(&sock, "CLI-EXIT=").await;
    assert!(text.contains("CLI-EXIT=4"), "pane:\n{text}");
    pane_until(&sock, "TTY-RESTORED").await;

    // The throwaway machine is gone.
    let r = d.get("/v1/apps/shellapp/machines").await;
    let list: Vec<Value> = r.json().unwrap();
    assert!(list.is_empty(), "machines left: {list:?}");
}

#[tokio::test]
async fn cli_run_shell_needs_a_terminal() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("notty").await;
    let out = std::process::Command::new(common::hangar_bin())
        .args(["machine", "run", "--shell", &image(), "-a", "notty"])
        .env("HANGAR_API_URL", format!("unix://{}", d.socket.display()))
        .env("HANGAR_API_TOKEN", &d.token)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run hangar");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "Error: --shell needs an interactive terminal on stdin"
    );
    let list: Vec<Value> = d.get("/v1/apps/notty/machines").await.json().unwrap();
    assert!(list.is_empty(), "machines: {list:?}");
}

/// Piped input (stdin not a terminal) runs the command without a pty, as flyctl does: the
/// input ends with an EOF the command sees, and nothing is echoed back.
#[tokio::test]
async fn cli_console_with_piped_stdin_ends_its_input() {
    use std::io::Write;
    let d = Daemon::start_with_runtime().await;
    d.create_app("pipe").await;
    let id = started_machine(&d, "pipe", json!({})).await;
    let mut child = std::process::Command::new(common::hangar_bin())
        .args(["machine", "console", &id, "-a", "pipe", "-C", "wc -c"])
        .env("HANGAR_API_URL", format!("unix://{}", d.socket.display()))
        .env("HANGAR_API_TOKEN", &d.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hangar");
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("console with piped stdin never ended");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
}

/// exec without a container runs in `app`, not in the first container; output past 1 MiB
/// is said to be cut.
#[tokio::test]
async fn exec_defaults_to_app_and_reports_truncation() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("execapp").await;
    let sleeper = |name: &str| {
        json!({"name": name, "image": image(),
               "cmd": ["/bin/sh", "-c", format!("echo {name} > /whoami; exec sleep inf")]})
    };
    let id = d
        .launch(
            "execapp",
            json!({"config": {"containers": [sleeper("init"), sleeper("app"), sleeper("side")]}}),
        )
        .await;
    d.wait_state("execapp", &id, "started").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let r = d
            .post(
                &format!("/v1/apps/execapp/machines/{id}/exec"),
                json!({"command": ["cat", "/whoami"]}),
            )
            .await;
        let v: Value = r.json().unwrap();
        if v["stdout"].as_str().is_some_and(|s| !s.is_empty()) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(out["stdout"], "app\n", "{out}");
    assert!(out.get("stdout_truncated").is_none(), "{out}");

    let r = d
        .post(
            &format!("/v1/apps/execapp/machines/{id}/exec"),
            json!({"command": ["head", "-c", "1500000", "/dev/zero"]}),
        )
        .await;
    let v: Value = r.json().unwrap();
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1 << 20, "kept 1 MiB");
    assert_eq!(v["stdout_truncated"], true, "{}", v["exit_code"]);
    let out = std::process::Command::new(common::hangar_bin())
        .args([
            "machine",
            "exec",
            &id,
            "head -c 1500000 /dev/zero",
            "-a",
            "execapp",
        ])
        .env("HANGAR_API_URL", format!("unix://{}", d.socket.display()))
        .env("HANGAR_API_TOKEN", &d.token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdout was cut at 1 MiB"), "{err}");
}
