//! Relay threads: where sessions are spliced in user space, each on one
//! single-threaded runtime that owns both its sockets.
//!
//! A splice is two reads and two writes per transaction, and nearly all of
//! its cost is the kernel's. On the shared multi-threaded runtime a third
//! cost came on top: the worker whose `epoll_wait` saw a socket ready woke
//! another worker (a `futex`) to share the task it had queued, and each
//! worker slept and woke on its own. So sessions are packed: a relay thread
//! takes new sessions until it holds [`FILL`] of them or was busy more than
//! [`BUSY_PERMILLE`] of the last [`SAMPLE`]; then the next thread does.
//! A thread carrying many sessions finds several ready at each
//! `epoll_wait` and seldom sleeps, as a single-threaded pooler (PgBouncer)
//! does, and a machine whose load outgrows one core still spreads it over
//! one thread per core. Past every thread's fill, a session goes to the
//! thread with the fewest.
//!
//! Measured with `cargo bench --bench scale` (`cpu-tx`, pgbench `-c 8`):
//! the proxy's CPU per 1,000 transactions was 1.14-1.20x PgBouncer's on
//! the shared runtime, 1.12-1.16x with sessions spread evenly over relay
//! threads, and 0.97-1.10x packed, 1.02-1.04x by the median of five runs
//! (docs/scale.md). The trade is that sessions stay where they started: a
//! thread whose sessions all get busy later is not relieved until they
//! reconnect.
//!
//! Nothing here knows what a session is: [`RelayThreads::run`] builds a
//! future on the chosen thread and awaits its result. A stream moved here
//! must leave the shared runtime's reactor first and join the relay
//! thread's inside the future (`tls::MaybeTls::detach`, then `attach`), or
//! its readiness would still arrive on the shared runtime and cost a
//! cross-thread wakeup each time.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Sessions a thread takes before new ones go to the next thread: an
/// application's pool of connections fits on one thread, and a burst of
/// connects that comes before any of them is busy (which the busy measure
/// cannot see yet) is still spread, this many to a thread.
pub const FILL: usize = 16;
/// A thread busier than this (per mille of [`SAMPLE`], running rather than
/// waiting in `epoll_wait`) takes no new session while another has room.
pub const BUSY_PERMILLE: u32 = 500;
/// How often a thread measures how busy it was.
pub const SAMPLE: Duration = Duration::from_millis(250);

/// A relay thread's task could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The task panicked, or its thread stopped (shutdown) before it ended.
    #[error("relay thread task ended abnormally: {0}")]
    Aborted(#[from] tokio::task::JoinError),
}

/// The relay threads, each running a current-thread runtime until dropped.
pub struct RelayThreads {
    threads: Vec<RelayThread>,
    fill: usize,
}

struct RelayThread {
    handle: Handle,
    /// `rolemint_relay_thread_sessions` of this thread, looked up once.
    sessions: metrics::Gauge,
    /// Futures running on it.
    load: Arc<AtomicUsize>,
    /// How busy it was over the last [`SAMPLE`], per mille.
    busy: Arc<AtomicU32>,
    /// Dropped (with the [`RelayThreads`]) to stop the thread; its
    /// runtime then drops whatever still runs there.
    _stop: oneshot::Sender<()>,
}

impl RelayThreads {
    /// One thread per available core (at least one).
    pub fn start() -> io::Result<RelayThreads> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(count, FILL)
    }

    /// `count` threads (at least one), each filled with `fill` sessions
    /// (at least one) before the next.
    pub fn with_threads(count: usize, fill: usize) -> io::Result<RelayThreads> {
        let threads = (0..count.max(1))
            .map(RelayThread::start)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(RelayThreads {
            threads,
            fill: fill.max(1),
        })
    }

    /// The first thread with room (under its fill, not busy), else the one
    /// running the fewest.
    fn pick(&self) -> &RelayThread {
        let load = |t: &&RelayThread| t.load.load(Ordering::Relaxed);
        let room = |t: &&RelayThread| {
            load(t) < self.fill && t.busy.load(Ordering::Relaxed) <= BUSY_PERMILLE
        };
        self.threads
            .iter()
            .find(room)
            .or_else(|| self.threads.iter().min_by_key(load))
            .expect("at least one relay thread")
    }

    /// Builds `make`'s future on the thread [`pick`](Self::pick) chose and
    /// awaits its output. `make` runs on that thread, inside its runtime.
    pub async fn run<F, Fut>(&self, make: F) -> Result<Fut::Output, RelayError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let thread = self.pick();
        let running = Running::start(Arc::clone(&thread.load), thread.sessions.clone());
        let task = thread.handle.spawn(async move {
            let _running = running;
            make().await
        });
        Ok(task.await?)
    }
}

/// Counts a future on its thread for as long as it runs, however it ends
/// (dropped unrun, too, when the thread has stopped).
struct Running {
    load: Arc<AtomicUsize>,
    sessions: metrics::Gauge,
}

impl Running {
    fn start(load: Arc<AtomicUsize>, sessions: metrics::Gauge) -> Running {
        load.fetch_add(1, Ordering::Relaxed);
        sessions.increment(1.0);
        Running { load, sessions }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.sessions.decrement(1.0);
    }
}

impl RelayThread {
    fn start(index: usize) -> io::Result<RelayThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let busy = Arc::new(AtomicU32::new(0));
        let measured = Arc::clone(&busy);
        let busy_gauge = crate::observe::metrics::relay_thread_busy(index);
        std::thread::Builder::new()
            .name(format!("rolemint-relay-{index}"))
            .spawn(move || {
                // Runs the spawned futures until the sender is dropped; the
                // runtime's drop then drops any still running (their
                // sockets close).
                runtime.block_on(async {
                    tokio::select! {
                        _ = stopped => {}
                        _ = measure_busy(&measured, &busy_gauge) => {}
                    }
                });
            })?;
        Ok(RelayThread {
            handle,
            sessions: crate::observe::metrics::relay_thread_sessions(index),
            load: Arc::new(AtomicUsize::new(0)),
            busy,
            _stop: stop,
        })
    }
}

/// Every [`SAMPLE`], stores how much of it this thread's runtime spent
/// running tasks rather than waiting for events, per mille (and shows it
/// as `rolemint_relay_thread_busy_ratio`).
async fn measure_busy(busy: &AtomicU32, shown: &metrics::Gauge) {
    let metrics = Handle::current().metrics();
    let mut last = (Instant::now(), metrics.worker_total_busy_duration(0));
    loop {
        tokio::time::sleep(SAMPLE).await;
        let now = (Instant::now(), metrics.worker_total_busy_duration(0));
        let elapsed = now.0.duration_since(last.0).as_secs_f64();
        let ran = now.1.saturating_sub(last.1).as_secs_f64();
        if elapsed > 0.0 {
            let ratio = (ran / elapsed).min(1.0);
            busy.store((ratio * 1000.0) as u32, Ordering::Relaxed);
            shown.set(ratio);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, watch};

    /// A future for [`RelayThreads::run`] that reports its thread's name,
    /// then holds its place until `release` turns true; with `spin`, it
    /// keeps its thread busy meanwhile.
    fn held(
        names: &mpsc::UnboundedSender<String>,
        release: &watch::Receiver<bool>,
        spin: bool,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
        let (names, mut release) = (names.clone(), release.clone());
        move || {
            Box::pin(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = names.send(name.unwrap_or_default());
                while spin && !*release.borrow() {
                    let until = Instant::now() + Duration::from_millis(20);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
                let _ = release.wait_for(|r| *r).await;
            })
        }
    }

    #[tokio::test]
    async fn a_thread_is_filled_before_the_next_and_loads_go_back_to_zero() {
        let relays = RelayThreads::with_threads(2, 2).expect("threads");
        let (release, released) = watch::channel(false);
        let (names, mut started) = mpsc::unbounded_channel();
        let all = async {
            tokio::join!(
                relays.run(held(&names, &released, false)),
                relays.run(held(&names, &released, false)),
                relays.run(held(&names, &released, false)),
            )
        };
        tokio::pin!(all);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            tokio::select! {
                name = started.recv() => seen.push(name.expect("a name")),
                _ = &mut all => panic!("ended before the release"),
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            ["rolemint-relay-0", "rolemint-relay-0", "rolemint-relay-1"]
        );
        release.send(true).expect("receivers");
        let (a, b, c) = all.await;
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        let loads: Vec<usize> = relays
            .threads
            .iter()
            .map(|t| t.load.load(Ordering::Relaxed))
            .collect();
        assert_eq!(loads, [0, 0]);
    }

    #[tokio::test]
    async fn a_busy_thread_takes_no_new_session_while_another_has_room() {
        let relays = RelayThreads::with_threads(2, 100).expect("threads");
        let (release, released) = watch::channel(false);
        let (names, mut started) = mpsc::unbounded_channel();
        let busy = relays.run(held(&names, &released, true));
        tokio::pin!(busy);
        let first = tokio::select! {
            name = started.recv() => name.expect("a name"),
            _ = &mut busy => panic!("ended before the release"),
        };
        assert_eq!(first, "rolemint-relay-0");
        // Until relay-0 has measured itself busy.
        while relays.threads[0].busy.load(Ordering::Relaxed) <= BUSY_PERMILLE {
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE / 5) => {}
                _ = &mut busy => panic!("ended before the release"),
            }
        }
        let next = relays.run(held(&names, &released, false));
        tokio::pin!(next);
        let second = tokio::select! {
            name = started.recv() => name.expect("a name"),
            _ = &mut busy => panic!("ended before the release"),
            _ = &mut next => panic!("ended before the release"),
        };
        assert_eq!(second, "rolemint-relay-1");
        release.send(true).expect("receivers");
        assert!(busy.await.is_ok() && next.await.is_ok());
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_crash() {
        let relays = RelayThreads::with_threads(1, FILL).expect("threads");
        let out = relays.run(|| async { panic!("boom") }).await;
        assert!(matches!(out, Err(RelayError::Aborted(_))));
        assert_eq!(relays.run(|| async { 7 }).await.expect("ran"), 7);
    }
}
