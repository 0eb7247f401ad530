//! The threads that serve client connections, each running its own single-threaded tokio
//! runtime (nginx's worker model).
//!
//! A proxied request wakes three things in turn: the client connection, the machine
//! connection, the client connection again. On tokio's work-stealing pool those wakeups moved
//! the connection's task between threads, and the hand-offs cost a fifth of the throughput on
//! two cores (bench_proxy: 23.6k req/s with two pool threads, 30.4k with one). Here a
//! connection is accepted on the daemon's runtime and then lives on one worker for good, its
//! machine connections with it; the workers share nothing per request but the proxy's table,
//! loads and metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

struct Worker {
    handle: Handle,
    /// Client connections being served on it.
    connections: Arc<AtomicUsize>,
    /// Dropped with the pool: the worker's thread then ends, and its runtime with it.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The pool; empty when no thread could be started (connections are then served on the
/// daemon's runtime, as before).
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

/// A connection's seat on a worker, given back when dropped.
pub(crate) struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub(crate) fn start(n: usize) -> Workers {
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            match start_one(i) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    tracing::warn!(error = %e, "proxy: cannot start a worker thread");
                    break;
                }
            }
        }
        Workers { workers }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// The worker serving the fewest connections, and a seat on it for a new one; `None`
    /// when there is no worker.
    pub(crate) fn pick(&self) -> Option<(&Handle, Seat)> {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.connections.load(Ordering::Relaxed))?;
        w.connections.fetch_add(1, Ordering::Relaxed);
        Some((&w.handle, Seat(w.connections.clone())))
    }
}

fn start_one(i: usize) -> std::io::Result<Worker> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("hangar-proxy-{i}"))
        .spawn(move || {
            // Its own shard of the per-request metrics (shard 0 is the other threads').
            crate::sharded::use_shard(i + 1);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(runtime.handle().clone()));
            // Until the pool is dropped; the runtime's tasks (connections) end with it.
            let _ = runtime.block_on(stopped);
        })?;
    let handle = handle_rx
        .recv()
        .map_err(|_| std::io::Error::other("the worker thread ended at start"))??;
    Ok(Worker {
        handle,
        connections: Arc::new(AtomicUsize::new(0)),
        _stop: stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_connections_go_to_the_least_busy_worker_and_seats_come_back() {
        let pool = Workers::start(2);
        assert_eq!(pool.len(), 2);
        let (a, seat_a) = pool.pick().unwrap();
        let (b, _seat_b) = pool.pick().unwrap();
        assert_ne!(
            a.id(),
            b.id(),
            "the second connection goes to the idle worker"
        );
        drop(seat_a);
        let (c, _seat_c) = pool.pick().unwrap();
        assert_eq!(
            a.id(),
            c.id(),
            "a freed seat makes its worker the least busy"
        );
        // Work runs on the worker's own thread.
        let name = std::sync::mpsc::channel();
        let tx = name.0;
        c.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        let got = name.1.recv().unwrap().unwrap();
        assert!(got.starts_with("hangar-proxy-"), "{got}");
    }
}
