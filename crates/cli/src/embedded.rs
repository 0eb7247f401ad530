//! The embedded default: `hangar machine run|create` with no daemon on the default socket (and
//! no `HANGAR_API_URL`) starts `hangar daemon` in the background and waits for it.

use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long to wait for a freshly started daemon to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a background daemon when none answers on the default socket. Does nothing when
/// `HANGAR_API_URL` names an endpoint (the user chose one; starting another would be wrong).
pub fn ensure_daemon() -> Result<()> {
    if std::env::var(hangar_client::API_URL_ENV).is_ok_and(|u| !u.trim().is_empty()) {
        return Ok(());
    }
    let socket = Path::new(hangar_client::DEFAULT_SOCKET);
    if UnixStream::connect(socket).is_ok() {
        return Ok(());
    }
    let data_dir = hangar_client::data_dir();
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!(
            "cannot create the data dir {} for a background daemon",
            data_dir.display()
        )
    })?;
    let log_path = data_dir.join("daemon.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the hangar executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("cannot duplicate the log file handle")?,
        )
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our session and
    // terminal so it outlives this command and its ^C.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot start `hangar daemon` in the background")?;
    println!(
        "No Hangar daemon was running; started `hangar daemon` in the background (pid {}, log {})",
        child.id(),
        log_path.display()
    );
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let token = data_dir.join(hangar_client::TOKEN_FILE);
    loop {
        if UnixStream::connect(socket).is_ok()
            && (std::env::var(hangar_client::API_TOKEN_ENV).is_ok() || token.exists())
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the background daemon exited ({status}); see {}",
                log_path.display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the background daemon did not open {} within {}s; see {}",
                socket.display(),
                STARTUP_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
