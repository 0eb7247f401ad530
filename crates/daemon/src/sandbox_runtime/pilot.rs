//! Talking to a machine's Pilot: its exit (through a pidfd), its events, control requests,
//! and waiting for its containers to start.

use super::*;

impl SandboxRuntime {
    /// Watches Pilot's exit through a pidfd and reports it; returns the receiver for stop().
    pub(super) fn watch_exit(
        &self,
        m: &MachineRecord,
        state: &RuntimeState,
    ) -> Result<watch::Receiver<Option<MachineExit>>, RuntimeError> {
        let pidfd =
            Arc::new(pidfd_open(state.pid).map_err(|e| failed(format!("pidfd_open: {e}")))?);
        let (tx, rx) = watch::channel(None);
        // Registered before the watcher runs, so an instant exit still counts as current.
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                m.id.clone(),
                Running {
                    state: state.clone(),
                    exited: rx.clone(),
                    stopping: false,
                    pidfd: pidfd.clone(),
                },
            );
        let exits = self.exits.clone();
        let dir = self.run_dir(&m.id);
        let cgroup = self.cgroup(&m.id);
        let (app, id, instance) = (m.app.clone(), m.id.clone(), state.instance_id.clone());
        let running = self.running.clone();
        let pid = state.pid;
        tokio::spawn(async move {
            let status = wait_pidfd(pidfd).await;
            let report = read_exit_report(&dir);
            let (exit_code, signal) = match &report {
                Some(e) => (e.exit_code, e.signal),
                None => match status {
                    Some((code, sig)) if code != 0 || sig.is_some() => (code, sig),
                    // Pilot died without a report (killed): treat it as killed.
                    _ => (137, Some(9)),
                },
            };
            let oom_killed = cgroup.oom_kills().unwrap_or(0) > 0;
            if oom_killed {
                // Said where users look first: the machine's logs.
                let line = "Out of memory: the kernel's OOM killer ended this machine (its memory limit is guest.memory_mb; try a larger --vm-memory)";
                if let Err(e) = append_platform_log(&dir, line) {
                    tracing::warn!(machine = %id, "cannot log the OOM kill: {e}");
                }
            }
            let exit = MachineExit {
                app,
                machine_id: id,
                instance_id: instance,
                exit_code,
                signal,
                oom_killed,
                exited_at: now_ms(),
                run: i64::from(pid),
            };
            let _ = tx.send(Some(exit.clone()));
            // Only the machine's current run reports; a run replaced by a newer one (killed
            // while cleaning up before a restart) must not look like a crash.
            let current = running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&exit.machine_id)
                .is_some_and(|r| r.state.pid == pid && !r.stopping);
            if current {
                let _ = exits.send(RuntimeEvent::Exited(exit));
            }
        });
        Ok(rx)
    }

    /// Follows Pilot's event stream and reports each container event; ends with Pilot. Pilot
    /// replays its recent events first; those before `since` (unix ms) were reported already.
    pub(super) fn watch_containers(&self, m: &MachineRecord, since: i64) {
        let socket = self.run_dir(&m.id).join(CONTROL_SOCKET);
        let events = self.exits.clone();
        let (app, id, instance) = (m.app.clone(), m.id.clone(), m.instance_id.clone());
        tokio::spawn(async move {
            // Pilot creates its socket within milliseconds of starting.
            let mut stream = None;
            for _ in 0..200 {
                if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
                    stream = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let Some(stream) = stream else { return };
            let (read, mut write) = stream.into_split();
            let watch = RequestLine::new(Request::Watch).to_line();
            if write.write_all(&watch).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(ev) = serde_json::from_str::<hangar_pilot::spec::Event>(&line) else {
                    continue;
                };
                if ev.at < since {
                    continue;
                }
                let kind = serde_json::to_value(ev.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let detail = serde_json::json!({
                    "container": ev.container,
                    "exit_code": ev.exit_code,
                    "signal": ev.signal,
                    "restart_count": ev.restart_count,
                    "health": ev.health,
                    "message": ev.message,
                });
                let sent = events.send(RuntimeEvent::Container(ContainerEvent {
                    app: app.clone(),
                    machine_id: id.clone(),
                    instance_id: instance.clone(),
                    kind,
                    at: ev.at,
                    detail,
                }));
                if sent.is_err() {
                    return;
                }
            }
        });
    }

    /// One request to Pilot's control socket. Bounded in time (a hung or frozen Pilot must not
    /// hold a machine's lock forever) and in size.
    pub(super) async fn control(&self, id: &str, req: &Request) -> Result<Reply, RuntimeError> {
        let limit = match req {
            Request::Exec { timeout_ms, .. } => {
                Duration::from_millis(timeout_ms.unwrap_or(60_000)).saturating_add(CONTROL_TIMEOUT)
            }
            Request::StatusOnceLaunched { .. } => START_TIMEOUT,
            _ => CONTROL_TIMEOUT,
        };
        let path = self.run_dir(id).join(CONTROL_SOCKET);
        let exchange = async {
            // No socket, nobody behind it, or Pilot closing the connection before it answers:
            // the machine is not running, or went down while the request was handled (a
            // signal that ends its workload does that).
            let down = |e: &std::io::Error| {
                use std::io::ErrorKind::*;
                matches!(
                    e.kind(),
                    NotFound | ConnectionRefused | ConnectionReset | BrokenPipe | UnexpectedEof
                )
            };
            let not_running =
                || RuntimeError::NotRunning("the machine is not running (any more)".into());
            let stream =
                tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| match down(&e) {
                        true => not_running(),
                        false => failed(format!("connecting to pilot: {e}")),
                    })?;
            let (read, mut write) = stream.into_split();
            let line = RequestLine::new(req.clone()).to_line();
            write.write_all(&line).await.map_err(|e| {
                if down(&e) {
                    not_running()
                } else {
                    failed(e)
                }
            })?;
            let mut reply = String::new();
            match BufReader::new(tokio::io::AsyncReadExt::take(read, CONTROL_REPLY_MAX))
                .read_line(&mut reply)
                .await
            {
                Ok(0) => return Err(not_running()),
                Ok(_) => {}
                Err(e) if down(&e) => return Err(not_running()),
                Err(e) => return Err(failed(e)),
            }
            // Any Pilot version this daemon knows (an older one keeps running its machine).
            let (_version, reply) = Reply::parse(reply.trim()).map_err(failed)?;
            match reply {
                Reply::Error { kind, message } => Err(pilot_error(kind, message)),
                ok => Ok(ok),
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| failed(format!("pilot did not answer within {}s", limit.as_secs())))?
    }

    /// Waits until Pilot has started (or failed to start) every container but the `patient`
    /// ones (which wait for another's health): one request Pilot answers once that is so,
    /// asked again every [`FAST_POLL`] only while Pilot's socket is not there yet (a cold
    /// start's Pilot makes it a few milliseconds after its exec). A Pilot older than that
    /// request is asked for its status until it says so.
    pub(super) async fn wait_ready(
        &self,
        id: &str,
        exited: &mut watch::Receiver<Option<MachineExit>>,
        patient: &std::collections::HashSet<String>,
    ) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let launched = |containers: &[ContainerStatus]| {
            containers
                .iter()
                .all(|c| c.state != ContainerState::Created || patient.contains(&c.name))
        };
        let mut ask = Request::StatusOnceLaunched {
            patient: patient.iter().cloned().collect(),
        };
        let mut polls = 0u32;
        loop {
            if exited.borrow().is_some() {
                let log = read_machine_file(&self.run_dir(id).join(PILOT_LOG))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let statuses: Vec<ContainerStatus> = read_exit_report(&self.run_dir(id))
                    .map(|e| e.containers)
                    .unwrap_or_default();
                if let Some(err) = statuses.iter().find_map(|c| c.error.clone()) {
                    return Err(RuntimeError::StartFailed(err));
                }
                if statuses.is_empty() {
                    return Err(failed(format!("pilot exited during start: {}", log.trim())));
                }
                // Every container ran and exited already: a short-lived machine. That is a
                // successful start; the exit is reported separately.
                return Ok(());
            }
            let answer = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    answer = self.control(id, &ask) => Some(answer),
                    _ = exited.changed() => None,
                }
            })
            .await
            .unwrap_or(None);
            match answer {
                Some(Ok(Reply::Status { containers })) => {
                    if let Some(err) = containers.iter().find_map(|c| c.error.clone()) {
                        return Err(RuntimeError::StartFailed(err));
                    }
                    if matches!(ask, Request::StatusOnceLaunched { .. }) || launched(&containers) {
                        return Ok(());
                    }
                }
                Some(Err(RuntimeError::Unsupported(_)))
                    if matches!(ask, Request::StatusOnceLaunched { .. }) =>
                {
                    ask = Request::Status;
                    continue;
                }
                // Pilot went (seen above) or has no socket yet: ask again shortly.
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failed(format!(
                    "pilot did not start the containers within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            polls += 1;
            let delay = if polls < FAST_POLLS {
                FAST_POLL
            } else {
                Duration::from_millis(20)
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = exited.changed() => {}
            }
        }
    }
}

/// Field 22 of /proc/PID/stat: when the process started, to detect pid reuse.
pub(super) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

pub(super) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits for the process behind `pidfd` to exit and reaps it when it is our child (Pilot is
/// reparented to the daemon, a subreaper). Returns (exit code, signal) when known.
pub(super) async fn wait_pidfd(pidfd: impl AsRawFd) -> Option<(i32, Option<i32>)> {
    // SAFETY: we own the pidfd and it stays open for as long as the AsyncFd lives.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.ok()?;
    let _ = afd.readable().await.ok()?;
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: P_PIDFD with a valid pidfd; WEXITED reaps.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            afd.get_ref().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: after a successful waitid the status fields are valid.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    match code {
        libc::CLD_EXITED => Some((status, None)),
        libc::CLD_KILLED | libc::CLD_DUMPED => Some((128 + status, Some(status))),
        _ => None,
    }
}

/// How long Pilot may take to launch a machine's containers.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a start asks again while Pilot's socket is not there yet (or Pilot is older
/// than `status_once_launched`), and for how many asks before it slows to every 20 ms.
const FAST_POLL: Duration = Duration::from_micros(250);
const FAST_POLLS: u32 = 200;
