//! One piece of work per key at a time, shared by everyone who asks for that key meanwhile.
//!
//! Unlike golang/groupcache's singleflight (and the `singleflight-async` crate), the work runs in a
//! task of its own: a caller that gives up does not cancel it or fail the others, a panic becomes
//! an error for every waiter, and the entry is removed by a drop guard, so a key is never stuck.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::Error;
use crate::lock;

/// The shared result of one piece of work.
pub(crate) type Outcome<T> = Result<T, Error>;

/// Calls in flight, by key.
pub(crate) struct Flight<T> {
    calls: Arc<Mutex<HashMap<String, Arc<Call<T>>>>>,
}

/// One call in flight: where its outcome will appear, and whether a `remove` overtook it.
struct Call<T> {
    outcome: watch::Receiver<Option<Outcome<T>>>,
    superseded: Arc<AtomicBool>,
}

/// Handed to the work: tells it whether the key was removed or set while it ran, in which case
/// its result must be returned to the waiters but not cached.
#[derive(Clone)]
pub(crate) struct Superseded(Arc<AtomicBool>);

impl Superseded {
    /// A flag no write has set, for tests that call a flight's work directly.
    #[cfg(test)]
    pub(crate) fn unset() -> Self {
        Superseded(Arc::new(AtomicBool::new(false)))
    }

    /// Sets the flag as a write would, for tests that hold a flag of their own.
    #[cfg(test)]
    pub(crate) fn set_for_test(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<T: Clone + Send + Sync + 'static> Flight<T> {
    pub(crate) fn new() -> Self {
        Flight {
            calls: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs `work` for `key` unless a call for `key` is already in flight, and waits for the
    /// outcome. The boolean is true for the caller that started the work.
    pub(crate) async fn run<F, Fut>(&self, key: &str, work: F) -> (Outcome<T>, bool)
    where
        F: FnOnce(Superseded) -> Fut,
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        // Without a runtime, tokio would drop the task unstarted and its guard would lock `calls`
        // on this thread, which still holds it: a hang. Fail before anything is in flight.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return (Err(Error::NoRuntime), false);
        };
        let (mut outcome, started) = self.join_or_start(key, work, &runtime);
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Err(Error::LoadAbandoned)),
            // The task was dropped unfinished: only when the runtime shuts down.
            Err(_) => Err(Error::LoadAbandoned),
        };
        (result, started)
    }

    /// The outcome to wait for: the call in flight for `key`, or a new one running `work` on
    /// `runtime`; true if it is new. Not async, so the task is never held in `run`'s future,
    /// which every caller boxes or spawns: it would double that future's size.
    fn join_or_start<F, Fut>(
        &self,
        key: &str,
        work: F,
        runtime: &tokio::runtime::Handle,
    ) -> (watch::Receiver<Option<Outcome<T>>>, bool)
    where
        F: FnOnce(Superseded) -> Fut,
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        let (outcome, task) = {
            let mut calls = lock(&self.calls);
            match calls.get(key) {
                Some(call) => (call.outcome.clone(), None),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    let superseded = Arc::new(AtomicBool::new(false));
                    let call = Arc::new(Call {
                        outcome: receiver.clone(),
                        superseded: superseded.clone(),
                    });
                    calls.insert(key.to_owned(), call.clone());
                    let guard = Landing {
                        calls: self.calls.clone(),
                        key: key.to_owned(),
                        call,
                    };
                    let work = work(Superseded(superseded));
                    let task = async move {
                        let outcome = match AssertUnwindSafe(work).catch_unwind().await {
                            Ok(outcome) => outcome,
                            Err(panic) => Err(Error::LoaderPanicked(panic_message(panic.as_ref()))),
                        };
                        // Leave the map before publishing: a caller arriving now starts afresh
                        // and finds the value in the cache, or loads again after an error.
                        drop(guard);
                        // No receiver left is fine: everyone gave up, the cache still has the value.
                        let _ = sender.send(Some(outcome));
                    };
                    (receiver, Some(task))
                }
            }
        };
        // Spawned with the lock released: a runtime shutting down drops the task at once, and its
        // guard must be able to take the lock.
        let started = task.is_some();
        if let Some(task) = task {
            // In the span of the caller that started it: its fetch or load is part of that
            // caller's trace (the others wait for it, in their own).
            runtime.spawn(task.in_current_span());
        }
        (outcome, started)
    }

    /// Marks the call in flight for `key`, if any, as superseded by a newer write, and takes it
    /// out of the map: it still answers the callers that joined it (they asked before the write
    /// finished, so its older value is theirs to have), but a caller that arrives from now on
    /// starts a call of its own. Left joinable, it handed the value from before the write to
    /// every `get` after it, and to every peer that fetched the key, until it ended.
    pub(crate) fn supersede(&self, key: &str) {
        if let Some(call) = lock(&self.calls).remove(key) {
            call.superseded.store(true, Ordering::Release);
        }
    }

    /// [`supersede`](Self::supersede) for every key in flight (a purge of the group).
    pub(crate) fn supersede_all(&self) {
        let calls = std::mem::take(&mut *lock(&self.calls));
        for call in calls.into_values() {
            call.superseded.store(true, Ordering::Release);
        }
    }

    /// Number of keys in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.calls).len()
    }
}

/// Removes a call from the map when its task ends, however it ends.
struct Landing<T> {
    calls: Arc<Mutex<HashMap<String, Arc<Call<T>>>>>,
    key: String,
    call: Arc<Call<T>>,
}

impl<T> Drop for Landing<T> {
    fn drop(&mut self) {
        let mut calls = lock(&self.calls);
        if calls
            .get(&self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.call))
        {
            calls.remove(&self.key);
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    /// On one thread, so that every caller has joined before the run is let go: on two, a caller
    /// not yet polled when the run ended started a second run, which waited forever on the
    /// release already spent (the test hung, 1 in about 10 runs).
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_callers_share_one_run() {
        let flight = Arc::new(Flight::<u32>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let mut callers = Vec::new();
        for _ in 0..50 {
            let (flight, runs, release) = (flight.clone(), runs.clone(), release.clone());
            callers.push(tokio::spawn(async move {
                flight
                    .run("k", |_| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok(7)
                    })
                    .await
            }));
        }
        // Wait until the one run has started, then let it finish.
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        let mut leaders = 0;
        for caller in callers {
            let (outcome, started) = caller.await.unwrap();
            assert_eq!(outcome.unwrap(), 7);
            leaders += usize::from(started);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(
            flight.len(),
            0,
            "the entry is removed once the work is done"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_leader_does_not_fail_the_others() {
        let flight = Arc::new(Flight::<u32>::new());
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let leader = {
            let (flight, started, release) = (flight.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                flight
                    .run("k", |_| async move {
                        started.notify_one();
                        release.notified().await;
                        Ok(1)
                    })
                    .await
            })
        };
        started.notified().await;
        let follower = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run("k", |_| async { Ok(2) }).await })
        };
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        release.notify_one();
        let (outcome, started_it) = follower.await.unwrap();
        assert_eq!(
            outcome.unwrap(),
            1,
            "the follower gets the leader's work, not a rerun"
        );
        assert!(!started_it);
    }

    #[tokio::test]
    async fn panic_is_an_error_for_every_waiter_and_the_key_is_not_stuck() {
        let flight = Flight::<u32>::new();
        let (outcome, _) = flight
            .run("k", |_| async {
                if true {
                    panic!("boom");
                }
                Ok(0)
            })
            .await;
        match outcome {
            Err(Error::LoaderPanicked(message)) => assert_eq!(message, "boom"),
            other => panic!("expected LoaderPanicked, got {other:?}"),
        }
        assert_eq!(flight.len(), 0);
        let (outcome, started) = flight.run("k", |_| async { Ok(3) }).await;
        assert_eq!(outcome.unwrap(), 3);
        assert!(started);
    }

    #[tokio::test]
    async fn errors_are_shared_not_cached() {
        let flight = Flight::<u32>::new();
        let (outcome, _) = flight
            .run("k", |_| async { Err(Error::LoadAbandoned) })
            .await;
        assert!(matches!(outcome, Err(Error::LoadAbandoned)));
        let (outcome, started) = flight.run("k", |_| async { Ok(4) }).await;
        assert_eq!((outcome.unwrap(), started), (4, true));
    }

    /// Polls `future` to completion on this thread, with no runtime: wakes unpark the thread.
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = std::task::Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::park();
        }
    }

    #[test]
    fn outside_a_runtime_run_fails_at_once_instead_of_hanging() {
        let (done, finished) = std::sync::mpsc::channel();
        // A thread of its own, so a hang fails this test after the bounded wait below.
        std::thread::spawn(move || {
            let flight = Flight::<u32>::new();
            let (outcome, started) = block_on(flight.run("k", |_| async { Ok(1) }));
            let (again, _) = block_on(flight.run("k", |_| async { Ok(2) }));
            let _ = done.send((outcome, started, again, flight.len()));
        });
        let (outcome, started, again, len) = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("Flight::run outside a runtime hung (or panicked) instead of failing");
        assert!(matches!(outcome, Err(Error::NoRuntime)), "{outcome:?}");
        assert!(!started, "no work was started");
        assert!(matches!(again, Err(Error::NoRuntime)), "{again:?}");
        assert_eq!(len, 0, "nothing is left in flight");
    }

    /// A call whose work reports that it started and then waits to be released.
    struct HeldCall {
        started: Arc<Notify>,
        release: Arc<Notify>,
        caller: tokio::task::JoinHandle<(Outcome<u32>, bool)>,
    }

    /// A held call of `key` that returns `value` once released.
    fn held_call(flight: &Arc<Flight<u32>>, key: &'static str, value: u32) -> HeldCall {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let caller = {
            let (flight, started, release) = (flight.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                flight
                    .run(key, |_| async move {
                        started.notify_one();
                        release.notified().await;
                        Ok(value)
                    })
                    .await
            })
        };
        HeldCall {
            started,
            release,
            caller,
        }
    }

    /// Issue 23: a caller that arrives after a write must not be handed the superseded call's
    /// older result. It starts a call of its own at once, while the old one still runs; the
    /// old call's callers get its result, and its end does not remove the new call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_supersede_a_new_caller_starts_afresh_and_the_old_callers_keep_theirs() {
        let flight = Arc::new(Flight::<u32>::new());
        let old = held_call(&flight, "k", 0);
        old.started.notified().await;
        flight.supersede("k");
        let new = held_call(&flight, "k", 1);
        // The new call runs while the old one is held: it did not join it.
        new.started.notified().await;
        old.release.notify_one();
        let (outcome, _) = old.caller.await.unwrap();
        assert_eq!(outcome.unwrap(), 0, "the old callers' result");
        assert_eq!(
            flight.len(),
            1,
            "the old call's end left the new one in place"
        );
        new.release.notify_one();
        let (outcome, started_it) = new.caller.await.unwrap();
        assert_eq!((outcome.unwrap(), started_it), (1, true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn supersede_reaches_the_running_work() {
        let flight = Arc::new(Flight::<bool>::new());
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let run = {
            let (flight, started, release) = (flight.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                flight
                    .run("k", |superseded| async move {
                        started.notify_one();
                        release.notified().await;
                        Ok(superseded.get())
                    })
                    .await
            })
        };
        started.notified().await;
        flight.supersede("other");
        flight.supersede("k");
        release.notify_one();
        assert!(run.await.unwrap().0.unwrap());
    }
}
