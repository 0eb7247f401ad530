//! The init in front of each container's workload.
//!
//! A process that is PID 1 of its pid namespace is special: the kernel drops every signal it
//! has no handler for (so `kill -TERM 1`, or a `kill -9 $$` by the workload itself, does
//! nothing), and orphans are reparented to it (so a workload that never calls `wait` piles up
//! zombies). Fly runs its own init in front of the app; Hangar does the same, as tini does:
//! the container's PID 1 forks the workload, forwards every signal to it, reaps every child,
//! and ends when the workload ends, telling Pilot how it ended (a signal death is not an exit
//! code) through a status pipe. Written by hand: it is one `sigwaitinfo` loop, and it must run
//! in the already-set-up container without an exec.

use std::os::fd::RawFd;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How the workload ended, as the init writes it to its status pipe: 5 bytes, a kind
/// (`b'e'` exited, `b's'` killed by a signal) and the code or signal number (little endian).
pub const STATUS_LEN: usize = 5;

/// The workload's end as read from a status pipe: `(exit code, signal)`.
pub fn decode_status(buf: &[u8]) -> Option<(Option<i32>, Option<i32>)> {
    let (kind, value) = buf.split_first()?;
    let value = i32::from_le_bytes(value.get(..4)?.try_into().ok()?);
    match kind {
        b'e' => Some((Some(value), None)),
        b's' => Some((None, Some(value))),
        _ => None,
    }
}

/// Blocks every signal and returns the previous mask; the init takes them with `sigwaitinfo`,
/// the workload restores the old mask before its exec.
pub fn block_all_signals() -> Result<SigSet, String> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))
        .map_err(|e| format!("block signals: {e}"))?;
    Ok(old)
}

/// In the forked workload, before its exec: default dispositions for the signals Pilot's
/// runtime handles or ignores (an ignored signal would stay ignored across exec), then the
/// mask the container had.
pub fn reset_signals_for_workload(old_mask: &SigSet) -> Result<(), String> {
    use nix::sys::signal::{signal, SigHandler};
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None)
        .map_err(|e| format!("restore the signal mask: {e}"))
}

/// Runs as PID 1 until `workload` ends, then exits with its code (128 + N for a signal N),
/// after writing how it ended to `status_fd`. Expects every signal blocked
/// ([`block_all_signals`]) and every other descriptor closed.
pub fn run(workload: Pid, status_fd: RawFd) -> ! {
    let all = SigSet::all();
    loop {
        let sig = match all.wait() {
            Ok(sig) => sig,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            // The workload sees the signal as if it had been sent to it; it may be gone.
            let _ = kill(workload, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                    finish(status_fd, b'e', code, code)
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == workload => {
                    finish(status_fd, b's', sig as i32, 128 + sig as i32)
                }
                // An orphan reparented to us, reaped so it does not stay a zombie.
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

fn finish(status_fd: RawFd, kind: u8, value: i32, code: i32) -> ! {
    let mut buf = [0u8; STATUS_LEN];
    buf[0] = kind;
    buf[1..].copy_from_slice(&value.to_le_bytes());
    // SAFETY: writing a local buffer to a pipe we own; exiting without unwinding.
    unsafe {
        libc::write(status_fd, buf.as_ptr().cast(), buf.len());
        // Everything else in the namespace dies with us, as with any container's init.
        libc::_exit(code)
    }
}

/// The init is a fork of Pilot, not an exec: give it its own name in `ps` (comm and the
/// argument area), so the host does not see a second "hangar pilot" per container. Called
/// before the workload is forked, so the workload never sees PID 1 under Pilot's name (its own
/// exec replaces what it inherits).
pub(crate) fn rename_process() {
    // SAFETY: PR_SET_NAME with a NUL-terminated constant.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"hangar-init".as_ptr(), 0, 0, 0) };
    set_process_title(b"hangar init");
}

/// Rewrites this process's argument area (what `ps` and `/proc/PID/cmdline` show) to `title`,
/// NUL-padded, as setproctitle does; a title longer than the area is cut. For a process whose
/// argv nothing reads any more.
pub fn set_process_title(title: &[u8]) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised comm; arg_start and arg_end are fields 48 and 49.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|f| f.parse::<usize>().ok()),
        fields.get(46).and_then(|f| f.parse::<usize>().ok()),
    ) else {
        return;
    };
    if end <= start {
        return;
    }
    // The area's last byte stays NUL.
    let len = title.len().min(end - start - 1);
    // SAFETY: [arg_start, arg_end) is this process's own argument area, mapped and writable
    // (it is how setproctitle works); the caller reads argv no more.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
        area.fill(0);
        area[..len].copy_from_slice(&title[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        let mut b = [0u8; STATUS_LEN];
        b[0] = b's';
        b[1..].copy_from_slice(&9i32.to_le_bytes());
        assert_eq!(decode_status(&b), Some((None, Some(9))));
        b[0] = b'e';
        assert_eq!(decode_status(&b), Some((Some(9), None)));
        assert_eq!(decode_status(&b[..3]), None);
        assert_eq!(decode_status(b""), None);
    }
}
