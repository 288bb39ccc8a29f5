//! A thread of its own for slow reads the event loop must not wait on: jobs
//! by key in, results out in the order asked, the loop woken after each. Two
//! use it: the unwind rules of ELF files (`native/unwind.rs`: libLLVM's take
//! seconds) and the frame shapes of ReadyToRun assemblies (`dotnet/frames.rs`:
//! CoreLib's took 50 ms). A leaf (it imports nothing of the crate).

use std::{
    collections::HashSet,
    hash::Hash,
    sync::{Arc, mpsc},
    time::Duration,
};

/// One background thread doing `work(key, job)` for each job asked, and
/// what it is doing (keys sent and not yet taken back).
#[derive(Debug)]
pub struct Worker<K, J, R> {
    jobs: mpsc::Sender<(K, J)>,
    done: mpsc::Receiver<(K, R)>,
    /// Sent and not yet taken back.
    pending: HashSet<K>,
    /// Notified after each job.
    notify: Arc<tokio::sync::Notify>,
}

impl<K, J, R> Worker<K, J, R>
where
    K: Clone + Eq + Hash + Send + 'static,
    J: Send + 'static,
    R: Send + 'static,
{
    /// Starts thread `name`, which does `work` for each job in the order
    /// asked and notifies `notify` after each. It is never joined: once the
    /// worker is dropped it ends after the job it is doing (the process may
    /// exit before). A thread that cannot start is logged (`what` it does)
    /// and every job asked of it refused (see [`Worker::ask`]).
    pub fn spawn(
        name: &str,
        what: &str,
        notify: Arc<tokio::sync::Notify>,
        work: impl Fn(&K, J) -> R + Send + 'static,
    ) -> Self {
        let (jobs, job_rx) = mpsc::channel::<(K, J)>();
        let (done_tx, done) = mpsc::channel();
        let woken = Arc::clone(&notify);
        let started = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for (key, job) in job_rx {
                    let result = work(&key, job);
                    if done_tx.send((key, result)).is_err() {
                        break;
                    }
                    woken.notify_one();
                }
            });
        if let Err(e) = started {
            log::warn!("cannot start the thread that {what}: {e}");
        }
        Worker {
            jobs,
            done,
            pending: HashSet::new(),
            notify,
        }
    }

    /// Is `key`'s job sent and its result not taken yet?
    pub fn is_pending<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.pending.contains(key)
    }

    /// Sends `key`'s job. `false`: the thread is gone (it could not start,
    /// or it panicked), the job is not done.
    pub fn ask(&mut self, key: K, job: J) -> bool {
        let sent = self.jobs.send((key.clone(), job)).is_ok();
        if sent {
            self.pending.insert(key);
        }
        sent
    }

    /// A result done, if one is waiting.
    pub fn take(&mut self) -> Option<(K, R)> {
        let (key, result) = self.done.try_recv().ok()?;
        self.pending.remove(&key);
        Some((key, result))
    }

    /// The next result, waiting for it at most `wait`.
    pub fn take_within(&mut self, wait: Duration) -> Option<(K, R)> {
        let (key, result) = self.done.recv_timeout(wait).ok()?;
        self.pending.remove(&key);
        Some((key, result))
    }

    /// Notified after each job.
    pub fn notify(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.notify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs come back in the order asked, each once, and a key is pending
    /// from its ask until its result is taken.
    #[test]
    fn results_come_back_in_order_and_pending_until_taken() {
        let mut w = Worker::spawn(
            "crossprof-test",
            "squares numbers",
            Arc::new(tokio::sync::Notify::new()),
            |k: &u32, j: u64| u64::from(*k) * j,
        );
        for k in 1..=5u32 {
            assert!(w.ask(k, u64::from(k)));
            assert!(w.is_pending(&k));
        }
        let mut got = Vec::new();
        while got.len() < 5 {
            let (k, r) = w.take_within(Duration::from_secs(10)).expect("a result");
            assert!(!w.is_pending(&k));
            got.push((k, r));
        }
        assert_eq!(got, vec![(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]);
        assert!(w.take().is_none());
    }
}
