//! `GET /hangar/v1/apps/{app}/logs`: the container logs Pilot writes
//! (`<data>/machines/<id>/logs/<container>.log`, lines `<RFC 3339> <stream> <text>`) as NDJSON,
//! oldest first, optionally following new lines as they are written.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

use crate::extract::Path as UrlPath;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::routes::AppState;
use crate::runtime::Runtime;
use crate::service::ListFilter;

/// How often a follower looks for machines and log dirs that appeared since it started; new
/// lines in dirs already followed wake it at once (inotify).
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// After a wake-up, how long to let more writes gather before reading, so a chatty container
/// costs one read per batch rather than one per line.
const COALESCE: Duration = Duration::from_millis(10);
/// Without inotify (no instances left), followers fall back to polling this often.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const DEFAULT_TAIL: usize = 100;

#[derive(Debug, Serialize)]
pub struct LogLine {
    pub timestamp: String,
    pub app: String,
    pub machine_id: String,
    pub region: String,
    pub container: String,
    pub stream: String,
    pub message: String,
}

/// One log file being read, remembering where it stopped.
struct Tail {
    path: PathBuf,
    /// Keeps the logs dir fd that `path` goes through open.
    _dir: Arc<OwnedFd>,
    /// The first read starts this many bytes before the end (the `tail` window), at a line
    /// boundary; `None` reads from the start.
    window: Option<u64>,
    offset: u64,
    machine_id: String,
    region: String,
    container: String,
}

fn parse(line: &str) -> Option<(&str, &str, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let (stream, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((ts, stream, msg))
}

impl Tail {
    /// New complete lines since the last read; a file that shrank was rotated.
    fn read_new(&mut self, app: &str) -> Vec<LogLine> {
        // The machine dir belongs to the machine's uid: never follow a link planted there.
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
        else {
            return Vec::new();
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Vec::new();
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
        }
        let mut reader = BufReader::new(file);
        let mut skip_partial = false;
        if let Some(window) = self.window.take() {
            if len > window {
                self.offset = len - window;
                skip_partial = true;
            }
        }
        if reader.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        if skip_partial {
            // The window starts mid-line; the first complete line follows the next newline.
            let mut partial = Vec::new();
            match reader.read_until(b'\n', &mut partial) {
                Ok(n) if partial.ends_with(b"\n") => self.offset += n as u64,
                _ => return Vec::new(),
            }
        }
        let mut out = Vec::new();
        let mut raw = Vec::new();
        loop {
            raw.clear();
            // Lines are bytes: a workload may print anything. read_line would fail on invalid
            // UTF-8 and stop the tail there for good; decode lossily (U+FFFD) instead.
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                // A partial line: leave it for the next read.
                Ok(_) if !raw.ends_with(b"\n") => break,
                Ok(n) => {
                    self.offset += n as u64;
                    let buf = String::from_utf8_lossy(&raw);
                    if let Some((ts, stream, msg)) = parse(buf.trim_end_matches('\n')) {
                        out.push(LogLine {
                            timestamp: ts.to_string(),
                            app: app.to_string(),
                            machine_id: self.machine_id.clone(),
                            region: self.region.clone(),
                            container: self.container.clone(),
                            stream: stream.to_string(),
                            message: msg.to_string(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// The log files of a machine, as paths through an fd of its logs dir: the dir is opened
/// without following a symlink (the machine's uid owns it), and the paths keep pointing into it
/// even if the name is swapped later. The fd lives as long as the returned handle.
fn log_files(runtime: &dyn Runtime, machine_id: &str) -> Vec<(String, PathBuf, Arc<OwnedFd>)> {
    let Some(fd) = runtime.open_logs(machine_id) else {
        return Vec::new();
    };
    let fd = Arc::new(fd);
    let through = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let Ok(rd) = std::fs::read_dir(&through) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".log")
                .map(|c| (c.to_string(), through.join(&name), fd.clone()))
        })
        .collect()
}

/// Wakes a follower when a file in a followed logs dir is written or created.
struct LogWatch {
    fd: AsyncFd<InotifyFd>,
    watched: HashMap<String, WatchDescriptor>,
}

/// `AsyncFd` wants `AsRawFd`, which nix's `Inotify` only offers through `AsFd`.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl LogWatch {
    fn new() -> Option<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::debug!("logs follow: no inotify ({e}), polling"))
            .ok()?;
        // SAFETY: the inotify fd is owned by the InotifyFd inside the AsyncFd, so it stays open
        // for as long as it is registered.
        let fd = unsafe { AsyncFd::register(InotifyFd(inotify)) }.ok()?;
        Some(Self {
            fd,
            watched: HashMap::new(),
        })
    }

    /// Watches the logs dir of each machine not watched yet (dirs that do not exist yet are
    /// tried again on the next rescan).
    fn watch(&mut self, runtime: &dyn Runtime, targets: &[(String, String)]) {
        for (id, _) in targets {
            if self.watched.contains_key(id) {
                continue;
            }
            // Opened without following links (the machine's uid owns the dir), then watched
            // through the fd.
            let Some(fd) = runtime.open_logs(id) else {
                continue;
            };
            let flags = AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_ONLYDIR;
            let through = format!("/proc/self/fd/{}", fd.as_raw_fd());
            if let Ok(wd) = self.fd.get_ref().0.add_watch(through.as_str(), flags) {
                self.watched.insert(id.clone(), wd);
            }
        }
    }

    /// Waits until something was written; false when inotify broke down.
    async fn changed(&self) -> bool {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return false;
            };
            match ready.get_inner().0.read_events() {
                Ok(_) => return true,
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(_) => return false,
            }
        }
    }

    /// Stops watching a machine that is gone (the kernel may have dropped the watch already).
    fn unwatch(&mut self, id: &str) {
        if let Some(wd) = self.watched.remove(id) {
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
    }

    /// Consumes events that arrived while reading, so they do not cause a second wake-up.
    fn drain(&self) {
        while self.fd.get_ref().0.read_events().is_ok() {}
    }
}

/// Whether a listed machine has logs to read: every machine that exists, and destroyed ones
/// whose logs are still kept.
fn has_logs(runtime: &dyn Runtime, m: &hangar_store::MachineRecord) -> bool {
    m.state != hangar_api::MachineState::Destroyed || runtime.open_logs(&m.id).is_some()
}

/// Starts following the log files of `targets` (machine id, region) not followed yet.
fn add_tails(
    tails: &mut HashMap<(String, String), Tail>,
    runtime: &dyn Runtime,
    targets: &[(String, String)],
    window: Option<u64>,
) {
    for (id, region) in targets {
        for (container, path, dir) in log_files(runtime, id) {
            tails
                .entry((id.clone(), container.clone()))
                .or_insert(Tail {
                    path,
                    _dir: dir,
                    window,
                    offset: 0,
                    machine_id: id.clone(),
                    region: region.clone(),
                    container,
                });
        }
    }
}

/// Orders lines of several files by time. Stamps are compared as instants (files written by
/// older Pilots trim trailing zeros, so text order is not time order); the sort is stable, so
/// lines of one file keep their order.
fn sort_by_time(lines: &mut [LogLine]) {
    use time::format_description::well_known::Rfc3339;
    lines.sort_by_cached_key(|l| {
        time::OffsetDateTime::parse(&l.timestamp, &Rfc3339)
            .map(|t| t.unix_timestamp_nanos())
            .unwrap_or(i128::MIN)
    });
}

fn to_ndjson(lines: &[LogLine]) -> Bytes {
    let mut out = Vec::new();
    for l in lines {
        if serde_json::to_writer(&mut out, l).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// Query: `instance` (machine id or name), `follow` (default false), `tail` (lines, default 100).
pub async fn app_logs(
    State(h): State<AppState>,
    UrlPath(app): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref());
    let follow = q.bool("follow", false)?;
    let tail = match q.int("tail")? {
        Some(n) if n < 0 => return Err(ApiError::bad_request("tail must not be negative")),
        Some(n) => n as usize,
        None => DEFAULT_TAIL,
    };
    let instance = q
        .get("instance")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let runtime = h.runtime();
    // Destroyed machines too: their logs are kept for a while (crate::log_archive).
    let filter = move || ListFilter {
        include_deleted: true,
        region: None,
        states: None,
        metadata: Vec::new(),
    };
    let mut machines = h.list_machines(&app, filter()).await?;
    machines.retain(|m| has_logs(runtime.as_ref(), m));
    if let Some(i) = &instance {
        if !machines.iter().any(|m| &m.id == i || &m.name == i) {
            return Err(ApiError::machine_not_found());
        }
    }
    let wanted =
        move |id: &str, name: &str| instance.as_deref().is_none_or(|i| i == id || i == name);

    let targets: Vec<(String, String)> = machines
        .iter()
        .filter(|m| wanted(&m.id, &m.name))
        .map(|m| (m.id.clone(), m.region.clone()))
        .collect();
    // File reads run on the blocking pool, not on the API's workers.
    let (mut tails, mut first) = {
        let (dir, app) = (runtime.clone(), app.clone());
        tokio::task::spawn_blocking(move || {
            let mut tails = HashMap::new();
            // Lines are short; 1 KiB a line (at least 64 KiB) covers the asked-for tail
            // without reading whole files.
            let window = (tail as u64).saturating_mul(1024).max(64 * 1024);
            add_tails(&mut tails, dir.as_ref(), &targets, Some(window));
            let first: Vec<LogLine> = tails
                .values_mut()
                .flat_map(|t: &mut Tail| t.read_new(&app))
                .collect();
            (tails, first)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    };
    // RFC 3339 timestamps of one clock sort as strings.
    sort_by_time(&mut first);
    let skip = first.len().saturating_sub(tail);
    let first = to_ndjson(&first[skip..]);
    if !follow {
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], first).into_response());
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        // None when the listing failed: then nothing is added or retired this round.
        let list_targets = || async {
            h.list_machines(&app, filter()).await.ok().map(|machines| {
                machines
                    .iter()
                    .filter(|m| wanted(&m.id, &m.name) && has_logs(runtime.as_ref(), m))
                    .map(|m| (m.id.clone(), m.region.clone()))
                    .collect::<Vec<_>>()
            })
        };
        let mut watch = LogWatch::new();
        let mut targets: Vec<(String, String)> = Vec::new();
        let mut next_rescan = tokio::time::Instant::now();
        // Machines destroyed since the last rescan: read one last time, then let go.
        let mut retiring: HashSet<String> = HashSet::new();
        loop {
            if tokio::time::Instant::now() >= next_rescan {
                // Machines (and containers) that appeared since the last look are picked up.
                if let Some(listed) = list_targets().await {
                    targets = listed;
                    if let Some(w) = watch.as_mut() {
                        w.watch(runtime.as_ref(), &targets);
                    }
                    let gone = |id: &String| !targets.iter().any(|(t, _)| t == id);
                    retiring = tails
                        .keys()
                        .map(|(id, _)| id.clone())
                        .filter(gone)
                        .collect();
                    // Watched machines that never had a log file are let go as well.
                    if let Some(w) = watch.as_ref() {
                        retiring.extend(w.watched.keys().filter(|id| gone(id)).cloned());
                    }
                }
                next_rescan = tokio::time::Instant::now() + RESCAN_INTERVAL;
            }
            // Watches are in place before this read, so nothing written after it is missed.
            let (dir, app2, t) = (runtime.clone(), app.clone(), targets.clone());
            let Ok((back, mut lines)) = tokio::task::spawn_blocking(move || {
                // Machines that appear while following are read from their first line.
                add_tails(&mut tails, dir.as_ref(), &t, None);
                let lines: Vec<LogLine> =
                    tails.values_mut().flat_map(|t| t.read_new(&app2)).collect();
                (tails, lines)
            })
            .await
            else {
                return;
            };
            tails = back;
            // Their files were read through still-open dir fds above; nothing more will come.
            if !retiring.is_empty() {
                tails.retain(|(id, _), _| !retiring.contains(id));
                if let Some(w) = watch.as_mut() {
                    for id in retiring.drain() {
                        w.unwatch(&id);
                    }
                }
                retiring.clear();
            }
            if !lines.is_empty() {
                sort_by_time(&mut lines);
                if tx.send(to_ndjson(&lines)).await.is_err() {
                    return;
                }
            }
            let rescan = tokio::time::sleep_until(next_rescan);
            match watch.as_ref() {
                Some(w) => {
                    tokio::select! {
                        ok = w.changed() => {
                            if !ok {
                                watch = None;
                            }
                            tokio::time::sleep(COALESCE).await;
                            if let Some(w) = watch.as_ref() {
                                w.drain();
                            }
                        }
                        _ = rescan => {}
                        _ = tx.closed() => return,
                    }
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: &str, msg: &str) -> LogLine {
        LogLine {
            timestamp: ts.into(),
            app: "a".into(),
            machine_id: "m".into(),
            region: "local".into(),
            container: "app".into(),
            stream: "stdout".into(),
            message: msg.into(),
        }
    }

    #[test]
    fn test_lines_sort_by_instant_not_text() {
        let mut lines = vec![
            line("2026-11-24T23:36:49.210015364Z", "1238"),
            line("2026-11-24T23:36:49.210015Z", "1237"),
            line("2026-11-24T23:36:49.210015Z", "1237b"),
            line("2026-11-24T23:36:48Z", "first"),
        ];
        sort_by_time(&mut lines);
        let order: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(order, ["first", "1237", "1237b", "1238"]);
    }
}
