//! The event loop's part every session shares (see [`Events`]).

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use super::{DRAIN_EVERY, announce::Announcer, pipeline::Pipeline};
use crate::{error::Error, sampler::Sampler};

/// The event loop's part every session shares: the ring buffer drained at
/// each wakeup, every [`DRAIN_EVERY`], when a rate-limited maps re-read is
/// due and when processes are announced (read on their own thread, see
/// [`super::announce`]), unwind rules and .NET precompiled code placed as
/// soon as their files are read (off the loop), the Go poll after each, goroutine
/// states sampled (`--go-state-sampling`), the kernel programs' log
/// flushed.
pub(crate) struct Events {
    ring: AsyncFd<RingBuf<MapData>>,
    announcer: Announcer,
    tick: tokio::time::Interval,
    rules_read: Arc<tokio::sync::Notify>,
    precompiled_read: Arc<tokio::sync::Notify>,
    /// `--go-state-sampling`'s rounds.
    go_sampling: Option<tokio::time::Interval>,
    log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Events {
    /// Over the ring buffer `ring` of `sampler`, feeding `pipeline`.
    pub(crate) fn new(
        ring: RingBuf<MapData>,
        sampler: &mut Sampler,
        pipeline: &Pipeline,
    ) -> Result<Self, Error> {
        let log = sampler.take_logger();
        let announcer = Announcer::start(
            sampler.take_announcements()?,
            pipeline.procs.announced.clone(),
        )
        .map_err(|source| Error::Io {
            what: "start the thread that reads announced processes",
            source,
        })?;
        // SAFETY: the ring buffer owns its fd and keeps it open, unchanged,
        // for as long as the AsyncFd holds it.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                Error::Io {
                    what: "poll the ring buffer",
                    source: std::io::Error::from(e),
                }
            })?;
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let go_sampling = (pipeline.go_sampling_hz > 0).then(|| {
            let period = 1_000_000_000 / pipeline.go_sampling_hz;
            let mut every = tokio::time::interval(std::time::Duration::from_nanos(period));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every
        });
        Ok(Events {
            ring,
            announcer,
            tick,
            go_sampling,
            rules_read: pipeline
                .kernel
                .as_ref()
                .map(|k| k.unwind.rules_read())
                .unwrap_or_default(),
            precompiled_read: pipeline.procs.dotnet.precompiled_read(),
            log,
        })
    }

    /// Waits for the next event and handles it: a wakeup (records drained),
    /// a file's rules read (placed), or the tick (records drained, the log
    /// flushed). Returns `true` on the tick, for the session's own periodic
    /// work. Cancel-safe: a `select!` arm beside others.
    pub(crate) async fn next(&mut self, pipeline: &mut Pipeline, sampler: &mut Sampler) -> bool {
        let tick = tokio::select! {
            () = self.rules_read.notified() => false,
            () = self.precompiled_read.notified() => {
                pipeline.poll_dotnet_unwind_now();
                false
            }
            () = self.announcer.notified() => {
                pipeline.drain(self.ring.get_mut(), self.announcer.take());
                false
            }
            guard = self.ring.readable_mut() => {
                if let Ok(mut guard) = guard {
                    pipeline.drain(guard.get_inner_mut(), self.announcer.take());
                    guard.clear_ready();
                }
                false
            }
            () = tokio::time::sleep(super::pipeline::MAPS_REREAD_EVERY),
                if pipeline.maps_waiting() =>
            {
                pipeline.drain(self.ring.get_mut(), self.announcer.take());
                false
            }
            _ = self.tick.tick() => {
                pipeline.drain(self.ring.get_mut(), self.announcer.take());
                true
            }
            _ = async { self.go_sampling.as_mut().expect("guarded").tick().await },
                if self.go_sampling.is_some() =>
            {
                pipeline.sample_goroutines();
                return false;
            }
        };
        load_runtime_walks_if_met(pipeline, sampler);
        pipeline.poll_go(sampler);
        if tick && let Some(l) = self.log.as_mut() {
            l.flush();
        }
        tick
    }

    /// Drains what waits in the ring buffer now.
    pub(crate) fn drain(&mut self, pipeline: &mut Pipeline) {
        pipeline.drain(self.ring.get_mut(), self.announcer.take());
    }

    /// Lets go of the ring buffer, and gives back the kernel programs' log
    /// to be flushed once the programs are detached.
    pub(crate) fn into_log(self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.log
    }
}

/// Loads the sampler's Go and .NET walks once the session has met a runtime,
/// before its process is described to the kernel: a .NET runtime found in a
/// process's maps (its JIT code is described later, by the .NET poll), or an
/// entry already written by another path (the sampler's flag). A Go process
/// has them loaded by the Go poll itself, before its offsets are written.
/// Called at every turn of the event loop and before sampling starts.
pub(crate) fn load_runtime_walks_if_met(pipeline: &Pipeline, sampler: &mut Sampler) {
    if sampler.runtime_walks() == &crate::sampler::RuntimeWalkState::NotLoaded
        && pipeline.procs.runs_dotnet()
    {
        sampler.load_runtime_walks();
    }
    sampler.load_runtime_walks_if_wanted();
}
