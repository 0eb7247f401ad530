//! Pilot in a sandbox made ahead of its machine (the daemon's pool): started as `pilot --pooled
//! <padding>`, it waits on its stdin, a socket, for the claim message that makes it a
//! machine's: the machine's run dir, with its spec (a sealed memfd) and its log file passed as
//! descriptors. The daemon sends it once the sandbox is the machine's (cgroup, mounts,
//! network; `hangar_sandbox::warm`). End of file instead means the pool let the sandbox go:
//! Pilot exits.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Pilot's flag for a pooled start.
pub const POOLED_FLAG: &str = "--pooled";

/// Room in the argument area for the title Pilot takes on when claimed (`hangar pilot
/// --machine-dir DIR --spec-stdin`, as an unpooled Pilot's command line reads): `ps` and
/// tools that find a machine's Pilot by its dir see no difference.
pub const TITLE_ROOM: usize = 480;

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    machine_dir: PathBuf,
}

/// Largest claim message (a path and a little JSON).
const CLAIM_MAX: usize = 8192;

/// Sends the claim message to a pooled Pilot on `socket` (the daemon's end of its stdin, a
/// seqpacket socket, so the message arrives whole).
pub fn send_claim(
    socket: BorrowedFd<'_>,
    machine_dir: &Path,
    spec: BorrowedFd<'_>,
    log: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(&Claim {
        machine_dir: machine_dir.to_path_buf(),
    })?;
    if body.len() > CLAIM_MAX {
        return Err(std::io::Error::other(
            "machine dir path too long for a claim",
        ));
    }
    let fds = [spec.as_raw_fd(), log.as_raw_fd()];
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&body)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != body.len() {
        return Err(std::io::Error::other("claim message cut short"));
    }
    Ok(())
}

/// Waits for the claim on stdin; returns the machine's run dir with stdin now the spec and
/// stdout/stderr the machine's Pilot log, or `None` when the pool let the sandbox go.
pub fn wait_for_claim() -> anyhow::Result<Option<PathBuf>> {
    let mut buf = vec![0u8; CLAIM_MAX];
    let (bytes, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        match recvmsg::<()>(0, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().context("reading the claim's descriptors")? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these descriptors for us.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for a claim"),
        }
    };
    if bytes == 0 {
        return Ok(None);
    }
    let claim: Claim = serde_json::from_slice(&buf[..bytes]).context("parsing the claim")?;
    let [spec, log] = <[OwnedFd; 2]>::try_from(fds)
        .map_err(|_| anyhow::anyhow!("a claim comes with the spec and the log"))?;
    for (fd, to) in [(&log, 1), (&log, 2), (&spec, 0)] {
        // SAFETY: dup2 onto this process's standard descriptors; the old ones close.
        if unsafe { libc::dup2(fd.as_raw_fd(), to) } < 0 {
            return Err(std::io::Error::last_os_error()).context("taking the claim's descriptors");
        }
    }
    let mut title = b"hangar\0pilot\0--machine-dir\0".to_vec();
    title.extend_from_slice(claim.machine_dir.as_os_str().as_encoded_bytes());
    title.extend_from_slice(b"\0--spec-stdin");
    hangar_sandbox::init::set_process_title(&title);
    Ok(Some(claim.machine_dir))
}
