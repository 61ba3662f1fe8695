//! [`Timers`]: where the proxy's timeouts run, so the sessions' event loop
//! needs no timer wheel.
//!
//! A tokio runtime built with timers parks through its time driver: every
//! time the loop goes idle it locks the wheel, finds the next expiry, reads
//! the clock twice and processes the wheel again on waking. With one park
//! per round trip, that was about 550 instructions a round trip, 5% of a
//! select-only transaction and 11% of a TPC-B one (callgrind), for timeouts
//! that almost never fire. So `lagrouter run` builds the sessions' runtime
//! without timers, and every timeout the sessions take (login, connect,
//! pool wait, read-your-writes wait, drain) is a tokio `Sleep` registered
//! with a wheel on a thread of its own, which wakes the session's task
//! across threads only when it fires. Registering and dropping one costs an
//! uncontended lock, as a local wheel does, and a wakeup of the timer thread
//! only when it is the earliest timer there.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Sleep, Timeout};

/// Makes timeouts and sleeps on a timer wheel. Cheap to clone.
///
/// [`Timers::spawn`] runs the wheel on a thread of its own, which ends when
/// the last clone is dropped; [`Timers::default`] uses the runtime the
/// caller is on, which must have timers enabled (tests, or a runtime of the
/// caller's that has them).
#[derive(Clone, Debug, Default)]
pub struct Timers {
    own: Option<Arc<Own>>,
}

#[derive(Debug)]
struct Own {
    handle: tokio::runtime::Handle,
    /// Dropped with the last clone: the thread then ends its runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Timers {
    /// Starts the timer thread (`lagrouter-timers`).
    pub fn spawn() -> std::io::Result<Timers> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_time();
        // Ends (with an error) once every clone has gone.
        let handle = runtime_thread("lagrouter-timers", builder, stopped)?;
        Ok(Timers {
            own: Some(Arc::new(Own {
                handle,
                _stop: stop,
            })),
        })
    }

    /// `future`, failing with `Elapsed` if it takes longer than `limit`.
    pub fn timeout<F: Future>(&self, limit: Duration, future: F) -> Timeout<F> {
        let _on = self.own.as_ref().map(|o| o.handle.enter());
        tokio::time::timeout(limit, future)
    }

    /// `future`, failing with `Elapsed` if it is not done by `deadline`.
    pub fn timeout_at<F: Future>(&self, deadline: Instant, future: F) -> Timeout<F> {
        let _on = self.own.as_ref().map(|o| o.handle.enter());
        tokio::time::timeout_at(deadline, future)
    }

    /// Completes after `wait`.
    pub fn sleep(&self, wait: Duration) -> Sleep {
        let _on = self.own.as_ref().map(|o| o.handle.enter());
        tokio::time::sleep(wait)
    }

    /// Completes at `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        let _on = self.own.as_ref().map(|o| o.handle.enter());
        tokio::time::sleep_until(deadline)
    }

    /// Runs `task` where the timers run: on the timer thread, or on the
    /// caller's runtime for [`Timers::default`]. For work that only
    /// sleeps and wakes others (a pool's wait deadlines).
    pub fn run<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.own {
            Some(o) => drop(o.handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

/// A current-thread runtime from `builder`, driven by a thread called
/// `name` until `until` resolves; an error if the OS refuses the thread or
/// the runtime. The runtime is built and dropped on that thread: tokio
/// forbids dropping one on an async thread.
pub(crate) fn runtime_thread<F>(
    name: &str,
    mut builder: tokio::runtime::Builder,
    until: F,
) -> std::io::Result<tokio::runtime::Handle>
where
    F: std::future::Future + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match builder.build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(until);
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other(format!("thread {name} ended before it started")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime with no timers, as `lagrouter run`'s: taking a timeout
    /// there directly panics; through the timer thread it works, both
    /// ways it can end.
    #[test]
    fn timeouts_work_on_a_runtime_without_timers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let timers = Timers::spawn().expect("timer thread");
        rt.block_on(async {
            let t0 = std::time::Instant::now();
            let r = timers
                .timeout(Duration::from_millis(50), std::future::pending::<()>())
                .await;
            assert!(r.is_err(), "the pending future timed out");
            let took = t0.elapsed();
            assert!(
                took >= Duration::from_millis(50) && took < Duration::from_secs(5),
                "{took:?}"
            );
            assert_eq!(
                timers.timeout(Duration::from_secs(5), async { 7 }).await,
                Ok(7)
            );
            let deadline = Instant::now() + Duration::from_millis(20);
            assert!(
                timers
                    .timeout_at(deadline, std::future::pending::<()>())
                    .await
                    .is_err()
            );
            let t0 = std::time::Instant::now();
            timers.sleep(Duration::from_millis(20)).await;
            assert!(t0.elapsed() >= Duration::from_millis(20));
        });
        let direct = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await })
        }));
        assert!(direct.is_err(), "the runtime has no timers of its own");
    }

    /// The thread ends once the last clone is gone.
    #[test]
    fn the_thread_ends_with_the_last_clone() {
        let timers = Timers::spawn().expect("timer thread");
        let weak = Arc::downgrade(timers.own.as_ref().expect("own thread"));
        let handle = timers.own.as_ref().expect("own thread").handle.clone();
        let clone = timers.clone();
        drop(timers);
        assert!(weak.upgrade().is_some(), "a clone is left");
        drop(clone);
        assert!(weak.upgrade().is_none());
        // The runtime shuts down once the thread has dropped it: a task
        // spawned on it then never runs to completion.
        let t0 = std::time::Instant::now();
        loop {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move {
                let _ = tx.send(());
            });
            if rx.recv_timeout(Duration::from_millis(100)).is_err() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the timer runtime still runs tasks 5 s after the last clone went"
            );
        }
    }

    /// Many sessions' timeouts at once, from several threads: each ends
    /// when its own deadline passes, not earlier.
    #[test]
    fn many_timeouts_from_several_threads() {
        let timers = Timers::spawn().expect("timer thread");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let timers = timers.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for i in 0..50u64 {
                            let wait = Duration::from_millis(5 + (i * 7 + t) % 40);
                            let t0 = std::time::Instant::now();
                            let f = timers.timeout(wait, std::future::pending::<()>());
                            set.spawn(async move {
                                assert!(f.await.is_err());
                                t0.elapsed() >= wait
                            });
                        }
                        let mut n = 0;
                        while let Some(on_time) = set.join_next().await {
                            assert!(on_time.expect("task"), "a timeout ended early");
                            n += 1;
                        }
                        n
                    })
                })
            })
            .collect();
        let done: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(done, 200);
    }
}
