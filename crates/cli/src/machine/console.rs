//! `hangar machine console` (flyctl `fly ssh console`) and the shell of `machine run --shell`:
//! an interactive command on a pty inside a machine, through the daemon's console upgrade.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_client::{Client, ConsoleFrame, ConsoleOptions};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::Ctx;

/// Default command: Hangar's images are busybox-based, which have no bash.
pub const DEFAULT_SHELL: &str = "/bin/sh";

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleArgs {
    /// Machine id or name (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Container to open the console in (multi-container machines; default the first)
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Command to run (shell words)
    #[arg(short = 'C', long, value_name = "COMMAND", default_value = DEFAULT_SHELL)]
    pub command: String,
    /// User to run it as (a name or uid of the container)
    #[arg(short = 'u', long, value_name = "USER", default_value = "root")]
    pub user: String,
}

pub(crate) async fn run(ctx: &Ctx<'_>, args: ConsoleArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;
    let code = session(
        ctx.client,
        ctx.app,
        &id,
        ConsoleOptions {
            container: args.container,
            command: Some(args.command),
            user: Some(args.user),
            ..Default::default()
        },
    )
    .await?;
    exit_with(code)
}

/// Ends the process with the remote command's code (the terminal is already restored).
pub(crate) fn exit_with(code: i32) -> Result<()> {
    if code != 0 {
        let _ = std::io::stdout().flush();
        std::process::exit(code.clamp(1, 255));
    }
    Ok(())
}

/// The local terminal in raw mode until dropped: keys (Ctrl-C included) go to the remote pty,
/// whose line discipline handles them. Drop restores the saved settings on every way out.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("switching the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The local window size (rows, cols), from whichever standard fd is a terminal.
fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0, 2] {
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills a winsize struct we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Runs `opts` in machine `id` attached to this terminal; returns the remote exit code.
pub(crate) async fn session(
    client: &Client,
    app: &str,
    id: &str,
    mut opts: ConsoleOptions,
) -> Result<i32> {
    let interactive = std::io::stdin().is_terminal();
    // As flyctl: no pty when stdin is not a terminal, so piped input ends with an EOF the
    // command sees (and nothing is echoed back).
    opts.no_tty = !interactive;
    if let Some((rows, cols)) = window_size() {
        opts.rows = Some(rows);
        opts.cols = Some(cols);
    }
    if opts.term.is_none() {
        opts.term = std::env::var("TERM").ok().filter(|t| !t.is_empty());
    }
    let stream = client.console(app, id, &opts).await.map_err(|e| {
        super::no_runtime(e, || format!("could not open a console on machine {id}"))
    })?;
    // Raw mode only once the remote side is there, so errors print normally.
    let raw = if interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let result = pump(stream, interactive).await;
    drop(raw);
    result
}

async fn pump(stream: hangar_client::ConsoleStream, interactive: bool) -> Result<i32> {
    let (mut rx_half, mut tx_half) = tokio::io::split(stream);
    // Frames are read by their own task: ConsoleFrame::read is not cancel-safe.
    let (frames_tx, mut frames) = mpsc::channel::<std::io::Result<Option<ConsoleFrame>>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let f = ConsoleFrame::read(&mut rx_half).await;
            let end = !matches!(f, Ok(Some(_)));
            if frames_tx.send(f).await.is_err() || end {
                return;
            }
        }
    });
    // A plain thread rather than tokio's stdin: a blocked read must not hold up the runtime's
    // shutdown; the process exits without waiting for it.
    let (keys_tx, mut keys) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut winch = signal(SignalKind::window_change()).context("SIGWINCH handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // Without a local terminal, Ctrl-C is a signal here: pass it on as the remote's ^C.
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut stdout = std::io::stdout();
    let mut keys_open = true;
    let result = loop {
        tokio::select! {
            f = frames.recv() => match f {
                Some(Ok(Some(ConsoleFrame::Data(d)))) => {
                    stdout.write_all(&d).context("writing to the terminal")?;
                    stdout.flush().context("writing to the terminal")?;
                }
                Some(Ok(Some(ConsoleFrame::Exit(code)))) => break Ok(code),
                Some(Ok(Some(_))) => {}
                Some(Ok(None)) | None => break Err(anyhow::anyhow!("the console connection closed before the command ended")),
                Some(Err(e)) => break Err(anyhow::anyhow!("console connection failed: {e}")),
            },
            k = keys.recv(), if keys_open => match k {
                Some(bytes) => {
                    if let Err(e) = ConsoleFrame::Data(bytes).write(&mut tx_half).await {
                        break Err(anyhow::anyhow!("console connection failed: {e}"));
                    }
                }
                // Input ended (a pipe): the command reads EOF; keep showing its output until
                // it exits.
                None => {
                    keys_open = false;
                    if !interactive {
                        if let Err(e) = ConsoleFrame::Eof.write(&mut tx_half).await {
                            break Err(anyhow::anyhow!("console connection failed: {e}"));
                        }
                    }
                }
            },
            _ = winch.recv() => {
                if let Some((rows, cols)) = window_size() {
                    let _ = ConsoleFrame::Resize { rows, cols }.write(&mut tx_half).await;
                }
            }
            _ = int.recv(), if !interactive => {
                let _ = ConsoleFrame::Data(vec![3]).write(&mut tx_half).await;
            }
            _ = term.recv() => break Ok(128 + libc::SIGTERM),
            _ = hup.recv() => break Ok(128 + libc::SIGHUP),
        }
    };
    reader.abort();
    result
}

/// `run --shell` needs a terminal to attach; refuse before creating anything.
pub(crate) fn require_terminal() -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("--shell needs an interactive terminal on stdin");
    }
    Ok(())
}
