//! Pilot in a sandbox made ahead of its machine (the daemon's pool): started as `pilot --pooled
//! <padding>`, it waits on its stdin, a socket, for the claim message that makes it a
//! machine's: the machine's run dir, with its spec (a sealed memfd), its log file and its root
//! filesystems (detached mounts) passed as descriptors. The daemon sends it once it has done
//! the rest of the take-over (cgroup, network, hostname; `hangar_sandbox::warm`); Pilot
//! attaches the root filesystems in its mount namespace, answers `ok` or `err <why>`, and
//! runs the machine. End of file instead means the pool let the sandbox go: Pilot exits.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use anyhow::Context;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Pilot's flag for a pooled start.
pub const POOLED_FLAG: &str = "--pooled";

/// Room in the argument area for the title Pilot takes on when claimed (`hangar pilot
/// --machine-dir DIR --spec-stdin`, as an unpooled Pilot's command line reads): `ps` and
/// tools that find a machine's Pilot by its dir see no difference.
pub const TITLE_ROOM: usize = 480;

/// What makes a warm sandbox a machine's.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claim {
    /// The machine's run dir.
    pub machine_dir: PathBuf,
    /// Where each root filesystem goes (its detached mount follows the spec and the log).
    pub mounts: Vec<PathBuf>,
}

/// Largest claim message (paths and a little JSON).
const CLAIM_MAX: usize = 16384;

/// Most root filesystems a claim carries (a machine with more is not pooled).
pub const CLAIM_MOUNTS_MAX: usize = 60;

/// Sends the claim message to a pooled Pilot on `socket` (the daemon's end of its stdin, a
/// seqpacket socket, so the message arrives whole).
pub fn send_claim(
    socket: BorrowedFd<'_>,
    claim: &Claim,
    spec: BorrowedFd<'_>,
    log: BorrowedFd<'_>,
    mounts: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let body = serde_json::to_vec(claim)?;
    if body.len() > CLAIM_MAX {
        return Err(std::io::Error::other("machine paths too long for a claim"));
    }
    if mounts.len() != claim.mounts.len() || mounts.len() > CLAIM_MOUNTS_MAX {
        return Err(std::io::Error::other(format!(
            "a claim carries at most {CLAIM_MOUNTS_MAX} root filesystems, each with its target"
        )));
    }
    let mut fds = vec![spec.as_raw_fd(), log.as_raw_fd()];
    fds.extend(mounts.iter().map(|m| m.as_raw_fd()));
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

/// Reads the answer to a claim (see the module's doc): `Ok` once Pilot runs the machine.
pub fn read_answer(answer: &[u8]) -> Result<(), String> {
    match answer {
        b"ok" => Ok(()),
        [] => Err("Pilot ended without an answer".into()),
        _ => Err(
            String::from_utf8_lossy(answer.strip_prefix(b"err ").unwrap_or(answer)).into_owned(),
        ),
    }
}

/// Waits for the claim on stdin, does the sandbox's part of the take-over and answers; returns
/// the machine's run dir with stdin now the spec and stdout/stderr the machine's Pilot log, or
/// `None` when the pool let the sandbox go.
pub fn wait_for_claim() -> anyhow::Result<Option<PathBuf>> {
    let mut buf = vec![0u8; CLAIM_MAX];
    let (bytes, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 2 + CLAIM_MOUNTS_MAX]);
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
                let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                break (msg.bytes, fds, truncated);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for a claim"),
        }
    };
    if bytes == 0 && !truncated {
        return Ok(None);
    }
    // Whatever goes wrong from here is answered, so the daemon's start says why.
    let taken = take_claim(&buf[..bytes], fds, truncated);
    let answer = match &taken {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("err {e}"),
    };
    let sent = sendmsg::<()>(
        0,
        &[IoSlice::new(answer.as_bytes())],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    let (claim, spec, log) = taken.map_err(|e| anyhow::anyhow!(e))?;
    sent.context("answering the claim")?;
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

/// The claim read from `body` with its descriptors, its root filesystems attached: the claim,
/// the spec and the log.
fn take_claim(
    body: &[u8],
    fds: Vec<OwnedFd>,
    truncated: bool,
) -> Result<(Claim, OwnedFd, OwnedFd), String> {
    if truncated {
        return Err("the claim carried more descriptors than a claim may".into());
    }
    let claim: Claim =
        serde_json::from_slice(body).map_err(|e| format!("parsing the claim: {e}"))?;
    if fds.len() != 2 + claim.mounts.len() {
        return Err(format!(
            "a claim with {} root filesystems comes with {} descriptors, not {}",
            claim.mounts.len(),
            2 + claim.mounts.len(),
            fds.len()
        ));
    }
    let mut fds = fds.into_iter();
    let (Some(spec), Some(log)) = (fds.next(), fds.next()) else {
        return Err("a claim comes with the spec and the log".into());
    };
    let mounts: Vec<(OwnedFd, PathBuf)> = fds.zip(claim.mounts.iter().cloned()).collect();
    // Attached (or the sandbox goes): the descriptors are not Pilot's to keep.
    hangar_sandbox::warm::enter_machine(&mounts)?;
    Ok((claim, spec, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect()
    }

    #[test]
    fn a_claim_is_taken_with_exactly_its_descriptors() {
        let body = br#"{"machine_dir": "/m/run", "mounts": []}"#;
        let (claim, _, _) = take_claim(body, fds(2), false).unwrap();
        assert_eq!(claim.machine_dir, PathBuf::from("/m/run"));

        let two_roots = br#"{"machine_dir": "/m/run", "mounts": ["/a", "/b"]}"#;
        let short = take_claim(two_roots, fds(3), false).unwrap_err();
        assert!(short.contains("2 root filesystems") && short.contains("4 descriptors, not 3"));
        assert!(
            take_claim(body, fds(3), false).is_err(),
            "an extra descriptor"
        );
        assert!(take_claim(body, fds(2), true)
            .unwrap_err()
            .contains("more descriptors"));
        assert!(take_claim(b"{", fds(2), false)
            .unwrap_err()
            .contains("parsing the claim"));
    }

    #[test]
    fn answers_read() {
        assert_eq!(read_answer(b"ok"), Ok(()));
        assert_eq!(
            read_answer(b"err no such dir"),
            Err("no such dir".to_string())
        );
        assert!(read_answer(b"").unwrap_err().contains("without an answer"));
    }
}
