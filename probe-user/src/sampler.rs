//! The kernel side, from user space: loading the programs, attaching the CPU
//! sampler to every online CPU, the target set, and the kernel's counters.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap as BpfHashMap, Map, MapData, MapError, MapFd, PerCpuArray, ProgramArray, RingBuf,
    },
    programs::{
        BtfTracePoint, PerfEvent, ProgramError, RawTracePoint, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use probe_common::{COUNTER_SLOTS, Config, go::GoOffsets, names, ring_bytes};

pub use crate::kernel::error::SamplerError;
use crate::kernel::error::{load_failed, program};
use crate::sys::thread_cpu_ns;

/// The kernel programs, built by `build.rs` from `probe-ebpf`.
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

/// What to sample.
#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// Samples per second per CPU.
    pub freq: u64,
    /// Keep only target processes.
    pub filter_pids: bool,
    /// Keep idle-task samples.
    pub include_idle: bool,
    /// Load the goroutine-state uprobes (`--go-states`).
    pub go_states: bool,
    /// Sample on-CPU stacks (every mode but `offcpu`).
    pub on_cpu: bool,
    /// Follow off-CPU spans (`--mode offcpu`, `wall`).
    pub off_cpu: bool,
    /// Off-CPU spans shorter than this are dropped in the kernel.
    pub min_block_ns: u64,
    /// Goroutine waits shorter than this are dropped in the kernel.
    pub min_go_wait_ns: u64,
    /// Send goroutine waits (`--mode goblock`; with `go_states`).
    pub go_block: bool,
    /// Follow HTTP requests (`--group-by trace`).
    pub http: bool,
    /// Keep each off-CPU span's kernel stack (`--kernel-waits`).
    pub off_cpu_kernel: bool,
    /// Follow a thread preempted until it runs again, as an off-CPU span
    /// (`--mode wall`: every moment of a thread).
    pub off_cpu_runnable: bool,
    /// Never sample crossprof itself (the agent, profiling the whole host).
    pub skip_self: bool,
    /// Threads in the cgroups given to [`Sampler::select_cgroup`] are targets.
    pub filter_cgroups: bool,
    /// Processes whose name after `exec` was given to
    /// [`Sampler::select_comm`] become targets.
    pub select_comms: bool,
    /// The processes targets start join the target set (`record -- CMD`,
    /// `--pid P --children`).
    pub follow_children: bool,
    /// How user stacks are walked (frame pointers only on a kernel without
    /// what the other walks need, see [`crate::kernel`]).
    pub walk: crate::kernel::Walk,
}

/// The loaded kernel side.
pub struct Sampler {
    ebpf: Ebpf,
    targets: BpfHashMap<MapData, u32, u8>,
    /// A second handle on `TARGETS`, for [`register_self_in_child`].
    targets_fd: MapFd,
    counters: PerCpuArray<MapData, u64>,
    freq: u64,
    on_cpu: bool,
    off_cpu: bool,
    http: bool,
    /// The `sched_process_exec` program is loaded (`--comm`, or targets).
    exec: bool,
    follow_children: bool,
    /// The on-CPU program loaded (`cpu_sample`, or `cpu_sample_fp`).
    cpu_program: &'static str,
    /// The `mmap` tracepoints, once attached.
    mmap_links: Vec<aya::programs::trace_point::TracePointLink>,
    /// The Go and .NET walks, loaded when first needed.
    runtimes: RuntimeWalks,
    /// CPU time this process spent loading programs (the verifier runs in
    /// the loading thread), ns.
    verify_cpu_ns: u64,
}

/// The CPU sampler with the Go and .NET walks
/// ([`names::CPU_SAMPLE_RUNTIMES_PROG`]), which `cpu_sample` tail-calls for
/// the samples of a process described as Go or .NET. Its walks are most of
/// the sampler's verification (two thirds of its instructions on 6.18), so
/// it is loaded only when a run first meets such a process, and before the
/// process is described to the kernel: before a command known to be Go
/// starts (its child writes its own entry), in the Go poll before a
/// process's offsets are written, at the event loop's turn that first finds
/// a .NET runtime in a process's maps (its JIT code is described later),
/// before sampling starts for running targets. As a safety net, whoever
/// writes a Go or .NET entry into `PROCESSES`
/// ([`crate::process::ProcessEntries`]) raises `wanted`, which the event
/// loop checks at every turn ([`Sampler::load_runtime_walks_if_wanted`]).
/// A sample taken while the slot is empty is walked by the process's rules
/// or frame pointers alone, counted as `runtime_walk_pending`.
struct RuntimeWalks {
    /// Raised by a writer of a Go or .NET entry.
    wanted: Arc<AtomicBool>,
    /// `RUNTIME_SAMPLERS`, taken at load (none: the frame-pointer sampler,
    /// which has no runtime walks, or no on-CPU sampling).
    array: Option<ProgramArray<MapData>>,
    state: RuntimeWalkState,
}

/// Where `RuntimeWalks` stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeWalkState {
    /// Not loaded (no Go or .NET process met yet).
    NotLoaded,
    /// Loaded and in `cpu_sample`'s program array, at this time since the
    /// collector's start.
    Loaded(std::time::Duration),
    /// Not needed by this run's sampler (frame pointers only, or no on-CPU
    /// sampling).
    NotUsed,
    /// The kernel refused it (why): runtime processes stay walked by rules
    /// and frame pointers.
    Failed(String),
}

impl Sampler {
    /// Loads the programs and maps (nothing runs until [`Sampler::attach`]).
    pub fn load(cfg: SamplerConfig) -> Result<Self, SamplerError> {
        let cpus = online_cpus().map_err(|(_, e)| SamplerError::Cpus(e))?;
        let ring = ring_bytes(cpus.len() as u32);
        let config = Config {
            filter_pids: u32::from(cfg.filter_pids),
            include_idle: u32::from(cfg.include_idle),
            wakeup_bytes: u64::from(ring / 8),
            min_block_ns: cfg.min_block_ns,
            min_go_wait_ns: cfg.min_go_wait_ns,
            go_block: u32::from(cfg.go_block),
            http: u32::from(cfg.http),
            off_cpu_kernel: u32::from(cfg.off_cpu_kernel),
            skip_tgid: if cfg.skip_self { std::process::id() } else { 0 },
            filter_cgroups: u32::from(cfg.filter_cgroups),
            select_comms: u32::from(cfg.select_comms),
            // The whole system: no exec is announced, so each process's
            // first sample is.
            announce_new: u32::from(!cfg.filter_pids),
            off_cpu_runnable: u32::from(cfg.off_cpu && cfg.off_cpu_runnable),
        };
        // No CO-RE relocations yet, so the kernel's BTF (several MB, ~15 MB parsed)
        // is not loaded: it was most of the collector's start-up time and memory.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries(names::EVENTS, ring)
            .map_max_entries(
                names::OFF_CPU_STASH,
                if cfg.off_cpu {
                    probe_common::offcpu::MAX_OFF_CPU_STASHED
                } else {
                    1
                },
            )
            .override_global(names::CONFIG, &config, true)
            .load(PROBE_OBJECT)
            .map_err(SamplerError::Load)?;
        let map_err = |name| move |source| SamplerError::Map { name, source };
        let targets = take_map(&mut ebpf, names::TARGETS)?;
        let targets_fd = match &targets {
            Map::HashMap(data) => data.info().and_then(|info| info.fd()),
            _ => Err(MapError::InvalidName {
                name: names::TARGETS.to_owned(),
            }),
        }
        .map_err(map_err(names::TARGETS))?;
        let targets = BpfHashMap::try_from(targets).map_err(map_err(names::TARGETS))?;
        let counters = take_map(&mut ebpf, names::COUNTERS)?;
        let counters = PerCpuArray::try_from(counters).map_err(map_err(names::COUNTERS))?;
        let cpu_program = match cfg.walk {
            crate::kernel::Walk::Full => names::CPU_SAMPLE_PROG,
            crate::kernel::Walk::FramePointers => names::CPU_SAMPLE_FP_PROG,
        };
        let runtime_array = if cfg.on_cpu && cpu_program == names::CPU_SAMPLE_PROG {
            Some(runtime_samplers(&mut ebpf)?)
        } else {
            None
        };
        let verify_started = thread_cpu_ns();
        if cfg.on_cpu {
            program::<PerfEvent>(&mut ebpf, cpu_program)?
                .load()
                .map_err(|source| load_failed(cpu_program, source))?;
        }
        if cfg.off_cpu {
            crate::offcpu::load(&mut ebpf)?;
        }
        for name in [names::MMAP_ENTER_PROG, names::MMAP_EXIT_PROG] {
            program::<TracePoint>(&mut ebpf, name)?
                .load()
                .map_err(|source| load_failed(name, source))?;
        }
        if cfg.http {
            let name = names::HTTP_SYS_EXIT_PROG;
            let btf = aya::Btf::from_sys_fs().map_err(|e| SamplerError::Program {
                name,
                source: ProgramError::Btf(e),
            })?;
            program::<BtfTracePoint>(&mut ebpf, name)?
                .load("sys_exit", &btf)
                .map_err(|source| load_failed(name, source))?;
        }
        // Selecting by name, and announcing the exec of any target.
        let exec = cfg.select_comms || cfg.filter_pids;
        if exec {
            let name = names::PROCESS_EXEC_PROG;
            program::<RawTracePoint>(&mut ebpf, name)?
                .load()
                .map_err(|source| load_failed(name, source))?;
        }
        if cfg.follow_children {
            let name = names::PROCESS_FORK_PROG;
            program::<TracePoint>(&mut ebpf, name)?
                .load()
                .map_err(|source| load_failed(name, source))?;
        }
        if cfg.go_states {
            crate::go::probes::load(&mut ebpf)?;
        }
        let verify_cpu_ns = thread_cpu_ns().saturating_sub(verify_started);
        Ok(Self {
            ebpf,
            targets,
            targets_fd,
            counters,
            freq: cfg.freq,
            on_cpu: cfg.on_cpu,
            off_cpu: cfg.off_cpu,
            http: cfg.http,
            exec,
            follow_children: cfg.follow_children,
            cpu_program,
            mmap_links: Vec::new(),
            runtimes: RuntimeWalks {
                wanted: Arc::new(AtomicBool::new(false)),
                state: if runtime_array.is_some() {
                    RuntimeWalkState::NotLoaded
                } else {
                    RuntimeWalkState::NotUsed
                },
                array: runtime_array,
            },
            verify_cpu_ns,
        })
    }

    /// Loads the Go and .NET walks and puts them in `cpu_sample`'s program
    /// array (see `RuntimeWalks`), if this run's sampler uses them and
    /// they are not loaded yet. A refusal is kept (see
    /// [`Sampler::runtime_walks`]) and not tried again.
    pub fn load_runtime_walks(&mut self) {
        if self.runtimes.state != RuntimeWalkState::NotLoaded {
            return;
        }
        let Some(array) = self.runtimes.array.as_mut() else {
            return;
        };
        let started = thread_cpu_ns();
        let loaded = load_runtime_sampler(&mut self.ebpf, array);
        let spent = thread_cpu_ns().saturating_sub(started);
        self.verify_cpu_ns += spent;
        self.runtimes.state = match loaded {
            Ok(()) => {
                log::debug!(
                    "the Go and .NET walks loaded ({:.1} ms of CPU)",
                    spent as f64 / 1e6
                );
                RuntimeWalkState::Loaded(crate::summary::since_process_start(
                    std::time::Instant::now(),
                ))
            }
            Err(e) => {
                log::warn!(
                    "{e}: Go and .NET processes are walked by rules and frame pointers only"
                );
                RuntimeWalkState::Failed(e.to_string())
            }
        };
    }

    /// [`Sampler::load_runtime_walks`] if a Go or .NET process was described
    /// since (the event loop's check, a load per run at most).
    pub fn load_runtime_walks_if_wanted(&mut self) {
        if self.runtimes.state == RuntimeWalkState::NotLoaded
            && self.runtimes.wanted.load(Ordering::Relaxed)
        {
            self.load_runtime_walks();
        }
    }

    /// Where the Go and .NET walks stand.
    pub fn runtime_walks(&self) -> &RuntimeWalkState {
        &self.runtimes.state
    }

    /// What loading the programs cost so far, and where the runtime walks
    /// stand, for `summary.json`.
    pub fn kernel_load(&self) -> crate::summary::KernelLoad {
        use RuntimeWalkState as S;
        let walks = &self.runtimes.state;
        crate::summary::KernelLoad {
            verify_cpu_ms: self.verify_cpu_ns as f64 / 1e6,
            runtime_walks: match walks {
                S::NotLoaded => "not_loaded",
                S::Loaded(_) => "loaded",
                S::NotUsed => "not_used",
                S::Failed(_) => "refused",
            },
            runtime_walks_loaded_ms: match walks {
                S::Loaded(at) => Some(at.as_secs_f64() * 1e3),
                _ => None,
            },
        }
    }

    /// Opens a `CPU_CLOCK` software event at the configured frequency on every
    /// online CPU and attaches the sampler to each; attaches the off-CPU
    /// programs if asked.
    pub fn attach(&mut self) -> Result<(), SamplerError> {
        if self.follow_children {
            mount_tracefs();
            let name = names::PROCESS_FORK_PROG;
            task_newtask_format().map_err(SamplerError::FollowChildren)?;
            program::<TracePoint>(&mut self.ebpf, name)?
                .attach("task", "task_newtask")
                .map_err(|source| SamplerError::Tracepoint { name, source })?;
        }
        if self.exec {
            let name = names::PROCESS_EXEC_PROG;
            program::<RawTracePoint>(&mut self.ebpf, name)?
                .attach("sched_process_exec")
                .map_err(|source| SamplerError::Tracepoint { name, source })?;
        }
        if self.off_cpu {
            crate::offcpu::attach(&mut self.ebpf)?;
        }
        if self.http {
            let name = names::HTTP_SYS_EXIT_PROG;
            program::<BtfTracePoint>(&mut self.ebpf, name)?
                .attach()
                .map_err(|source| SamplerError::Tracepoint { name, source })?;
        }
        if !self.on_cpu {
            return Ok(());
        }
        let freq = self.freq;
        let cpus = online_cpus().map_err(|(_, e)| SamplerError::Cpus(e))?;
        let program = program::<PerfEvent>(&mut self.ebpf, self.cpu_program)?;
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(freq),
                    false,
                )
                .map_err(|source| SamplerError::Attach { cpu, source })?;
        }
        Ok(())
    }

    /// Attaches the tracepoints at the entry and exit of `mmap`, which tell
    /// the collector when a process it walks by rules maps new code.
    pub fn attach_mmap_tracepoints(&mut self) -> Result<(), SamplerError> {
        mount_tracefs();
        for (name, event) in [
            (names::MMAP_ENTER_PROG, "sys_enter_mmap"),
            (names::MMAP_EXIT_PROG, "sys_exit_mmap"),
        ] {
            let program = program::<TracePoint>(&mut self.ebpf, name)?;
            let link = program
                .attach("syscalls", event)
                .and_then(|id| program.take_link(id))
                .map_err(|source| SamplerError::Tracepoint { name, source })?;
            self.mmap_links.push(link);
        }
        Ok(())
    }

    /// Detaches the `mmap` tracepoints on a thread of their own: closing a
    /// tracepoint's perf event waits for an RCU grace period (~60 ms each here),
    /// which the stop-to-SVG path need not wait for.
    pub fn detach_mmap_tracepoints_in_background(&mut self) {
        let links = std::mem::take(&mut self.mmap_links);
        if !links.is_empty() {
            let _ = std::thread::Builder::new()
                .name("crossprof-detach".into())
                .spawn(move || drop(links));
        }
    }

    /// Detaches every program on a thread of its own and frees the maps:
    /// each perf event and tracepoint closed waits for an RCU grace period
    /// (tens of ms each here), which writing the profile need not wait for.
    /// Nothing is read from the sampler after this.
    pub fn detach_in_background(self) {
        // A thread that cannot start drops its closure, and the sampler with
        // it, right here.
        let _ = std::thread::Builder::new()
            .name("crossprof-detach".into())
            .spawn(move || drop(self));
    }

    /// Adds `pid` (a tgid) to the target set.
    pub fn add_target(&mut self, pid: u32) -> Result<(), SamplerError> {
        self.targets
            .insert(pid, 1, 0)
            .map_err(|source| SamplerError::Map {
                name: names::TARGETS,
                source,
            })
    }

    /// Stops following `pid` (it exited), so that the target set never fills.
    pub fn remove_target(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid);
    }

    /// Takes the processes that exited out of the target set (the kernel
    /// adds the processes targets start, and nothing takes them out as they
    /// end: a build's thousands of compilers would fill it). Returns how many.
    pub fn prune_targets(&mut self) -> usize {
        let dead: Vec<u32> = self
            .targets
            .keys()
            .filter_map(Result::ok)
            .filter(|&pid| !crate::sys::alive(pid))
            .collect();
        for pid in &dead {
            let _ = self.targets.remove(pid);
        }
        dead.len()
    }

    /// Processes named `comm` (the kernel's name, at most 15 bytes) when they
    /// `exec` become targets.
    pub fn select_comm(&mut self, comm: &str) -> Result<(), SamplerError> {
        let mut key = [0u8; 16];
        let n = comm.len().min(15);
        key[..n].copy_from_slice(&comm.as_bytes()[..n]);
        self.select(names::COMMS, key)
    }

    /// Threads in cgroup (v2) `id` are targets.
    pub fn select_cgroup(&mut self, id: u64) -> Result<(), SamplerError> {
        self.select(names::CGROUPS, id)
    }

    /// Puts `key` in the selector set `name` (`COMMS`, `CGROUPS`).
    fn select<K: aya::Pod>(&mut self, name: &'static str, key: K) -> Result<(), SamplerError> {
        let err = |source| SamplerError::Map { name, source };
        let map = self.ebpf.map_mut(name).ok_or(err(MapError::InvalidName {
            name: name.to_owned(),
        }))?;
        let mut set: BpfHashMap<&mut MapData, K, u8> = BpfHashMap::try_from(map).map_err(err)?;
        set.insert(key, 1, 0).map_err(err)
    }

    /// The raw fd of the target set, for [`register_self_in_child`] in a forked child.
    pub fn targets_fd(&self) -> RawFd {
        self.targets_fd.as_fd().as_raw_fd()
    }

    /// The ring buffer every record arrives on (taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, SamplerError> {
        let map = take_map(&mut self.ebpf, names::EVENTS)?;
        RingBuf::try_from(map).map_err(|source| SamplerError::Map {
            name: names::EVENTS,
            source,
        })
    }

    /// The ring buffer process announcements arrive on (taken once; see
    /// `session::announce`).
    pub fn take_announcements(&mut self) -> Result<RingBuf<MapData>, SamplerError> {
        let map = take_map(&mut self.ebpf, names::ANNOUNCE)?;
        RingBuf::try_from(map).map_err(|source| SamplerError::Map {
            name: names::ANNOUNCE,
            source,
        })
    }

    /// The kernel's entries per process (taken once; shared by the tables
    /// below and the Go poll).
    pub fn take_processes(&mut self) -> Result<crate::process::ProcessEntries, SamplerError> {
        let map = take_map(&mut self.ebpf, names::PROCESSES)?;
        let map = BpfHashMap::try_from(map).map_err(|source| SamplerError::Map {
            name: names::PROCESSES,
            source,
        })?;
        Ok(crate::process::ProcessEntries::new(
            map,
            self.runtimes.wanted.clone(),
        ))
    }

    /// The kernel's tables for walking .NET stacks (taken once).
    pub fn take_dotnet_tables(
        &mut self,
        processes: &crate::process::ProcessEntries,
    ) -> Result<crate::dotnet::unwind::KernelTables, SamplerError> {
        let pages = take_map(&mut self.ebpf, names::CODE_PAGES)?;
        let pages = BpfHashMap::try_from(pages).map_err(|source| SamplerError::Map {
            name: names::CODE_PAGES,
            source,
        })?;
        Ok(crate::dotnet::unwind::KernelTables::new(
            processes.clone(),
            pages,
        ))
    }

    /// The kernel's `.eh_frame` tables (taken once).
    pub fn take_unwind_tables(
        &mut self,
        processes: &crate::process::ProcessEntries,
    ) -> Result<crate::native::unwind::UnwindTables, SamplerError> {
        let mut array = |name: &'static str| match take_map(&mut self.ebpf, name)? {
            Map::Array(data) => Ok(data),
            _ => Err(SamplerError::Map {
                name,
                source: MapError::InvalidName {
                    name: name.to_owned(),
                },
            }),
        };
        let rows = array(names::UNWIND_ROWS)?;
        let pages = array(names::UNWIND_PAGES)?;
        let maps = take_map(&mut self.ebpf, names::UNWIND_MAPS)?;
        let maps = aya::maps::Array::try_from(maps).map_err(|source| SamplerError::Map {
            name: names::UNWIND_MAPS,
            source,
        })?;
        crate::native::unwind::UnwindTables::new(rows, pages, maps, processes.clone()).map_err(
            |source| SamplerError::Map {
                name: names::UNWIND_ROWS,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "mmap",
                    io_error: source,
                }),
            },
        )
    }

    /// The loaded programs and maps, for a runtime's own probes (see
    /// [`crate::go::probes`]).
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The same, to attach.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// What the request-attribution program cost (with `kernel.bpf_stats_enabled`):
    /// (run count, run time in ns).
    pub fn http_program_stats(&self) -> Option<(u64, u64)> {
        let program: &BtfTracePoint = self
            .ebpf
            .program(names::HTTP_SYS_EXIT_PROG)?
            .try_into()
            .ok()?;
        let info = program.info().ok()?;
        (info.run_count() > 0).then(|| (info.run_count(), info.run_time().as_nanos() as u64))
    }

    /// The aya-log channel of the kernel programs, if they log.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// The kernel counters, summed over CPUs, indexed by `probe_common::Counter`.
    pub fn counters(&self) -> [u64; COUNTER_SLOTS as usize] {
        let mut out = [0u64; COUNTER_SLOTS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// `(run_count, run_time_ns)` of the sampler program, which the kernel keeps only
    /// while `kernel.bpf_stats_enabled` is 1.
    pub fn program_stats(&self) -> Option<(u64, u64)> {
        let program: &PerfEvent = self.ebpf.program(self.cpu_program)?.try_into().ok()?;
        let info = program.info().ok()?;
        let stats_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        stats_on.then(|| (info.run_count(), info.run_time().as_nanos() as u64))
    }
}

/// Adds the calling process to the target set whose fd is `targets_fd`, with a raw
/// `bpf(BPF_MAP_UPDATE_ELEM)`: async-signal-safe, so a forked child can run it
/// between `fork` and `exec` and be sampled from its first instruction, without
/// the parent having to learn its pid first (std's `spawn` only returns after
/// `exec`). With `go`, the child also puts its goroutine layout in its
/// `PROCESSES` entry (that map's fd, the offsets its binary needs), so that
/// its first samples carry their goroutine too.
pub fn register_self_in_child(targets_fd: RawFd, go: Option<(RawFd, GoOffsets)>) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    update_elem(targets_fd, &pid, &1u8)?;
    if let Some((fd, offsets)) = go {
        update_elem(fd, &pid, &crate::process::go_entry(offsets))?;
    }
    Ok(())
}

/// `bpf(BPF_MAP_UPDATE_ELEM, map_fd, key, value, BPF_ANY)`, nothing else (no
/// allocation, no lock: callable between `fork` and `exec`).
///
/// Layout of the `bpf_attr` member for `BPF_MAP_*_ELEM` (include/uapi/linux/bpf.h):
/// `u32 map_fd; (pad) u64 key; u64 value; u64 flags`.
fn update_elem<K, V>(map_fd: RawFd, key: &K, value: &V) -> io::Result<()> {
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let attr = MapElemAttr {
        map_fd: map_fd as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: 0,
    };
    // SAFETY: `attr` and the key and value it points to live across the call, and
    // the size passed is the size of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr as *const MapElemAttr,
            size_of::<MapElemAttr>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every program in crossprof's object, in the order `crossprof check` lists
/// them.
pub const ALL_PROGRAMS: [&str; 14] = [
    names::CPU_SAMPLE_PROG,
    names::CPU_SAMPLE_RUNTIMES_PROG,
    names::CPU_SAMPLE_FP_PROG,
    names::OFF_CPU_START_PROG,
    names::OFF_CPU_END_PROG,
    names::MMAP_ENTER_PROG,
    names::MMAP_EXIT_PROG,
    names::HTTP_SYS_EXIT_PROG,
    names::PROCESS_EXEC_PROG,
    names::PROCESS_FORK_PROG,
    names::GO_CASGSTATUS_PROG,
    names::GO_NEWPROC1_PROG,
    names::GO_SYSCALL_ENTER_PROG,
    names::GO_SYSCALL_EXIT_PROG,
];

/// What loading one program cost, and what the verifier made of it.
#[derive(Debug, Clone, Copy)]
pub struct LoadFigures {
    /// Instructions the verifier processed (Linux 5.16+).
    pub verified_insns: Option<u32>,
    /// CPU time of the load (the verifier runs in the calling thread).
    pub cpu_ns: u64,
    /// Wall time of the load.
    pub wall_ns: u64,
}

/// A program's name, and what loading it cost or why it did not load.
pub type ProgramLoad = (&'static str, Result<LoadFigures, SamplerError>);

/// `RUNTIME_SAMPLERS`, taken out of `ebpf` (a run's and `check --load`'s
/// loads hold it apart from the object).
fn runtime_samplers(ebpf: &mut Ebpf) -> Result<ProgramArray<MapData>, SamplerError> {
    ProgramArray::try_from(take_map(ebpf, names::RUNTIME_SAMPLERS)?).map_err(|source| {
        SamplerError::Map {
            name: names::RUNTIME_SAMPLERS,
            source,
        }
    })
}

/// Loads `cpu_sample_runtimes` and puts it in `RUNTIME_SAMPLERS` (`array`),
/// where `cpu_sample` tail-calls it (the kernel checks the two agree).
fn load_runtime_sampler(
    ebpf: &mut Ebpf,
    array: &mut ProgramArray<MapData>,
) -> Result<(), SamplerError> {
    let name = names::CPU_SAMPLE_RUNTIMES_PROG;
    let p = program::<PerfEvent>(ebpf, name)?;
    p.load().map_err(|source| load_failed(name, source))?;
    let fd = p.fd().map_err(|source| load_failed(name, source))?;
    array.set(0, fd, 0).map_err(|source| SamplerError::Map {
        name: names::RUNTIME_SAMPLERS,
        source,
    })
}

/// Loads each of `programs` (names in [`ALL_PROGRAMS`]) from one fresh
/// object, as a run would (off-CPU stash at its off-CPU size): what each
/// cost, or why the kernel refused it. Nothing is attached.
pub fn load_each(programs: &[&'static str]) -> Result<Vec<ProgramLoad>, SamplerError> {
    let cpus = online_cpus().map_err(|(_, e)| SamplerError::Cpus(e))?;
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .map_max_entries(names::EVENTS, ring_bytes(cpus.len() as u32))
        .map_max_entries(
            names::OFF_CPU_STASH,
            probe_common::offcpu::MAX_OFF_CPU_STASHED,
        )
        .load(PROBE_OBJECT)
        .map_err(SamplerError::Load)?;
    let btf = aya::Btf::from_sys_fs().ok();
    let mut runtime_array = runtime_samplers(&mut ebpf)?;
    let mut out = Vec::new();
    for &name in programs {
        let started = (thread_cpu_ns(), std::time::Instant::now());
        let loaded = match name {
            names::CPU_SAMPLE_RUNTIMES_PROG => load_runtime_sampler(&mut ebpf, &mut runtime_array),
            _ => load_one(&mut ebpf, name, btf.as_ref()),
        };
        let loaded = loaded.map(|()| {
            let (cpu, wall) = (thread_cpu_ns(), started.1.elapsed());
            LoadFigures {
                verified_insns: ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .and_then(|i| i.verified_instruction_count()),
                cpu_ns: cpu.saturating_sub(started.0),
                wall_ns: wall.as_nanos() as u64,
            }
        });
        out.push((name, loaded));
    }
    Ok(out)
}

/// Loads program `name` of `ebpf` by its kind (`cpu_sample_runtimes` by
/// [`load_runtime_sampler`]).
fn load_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    btf: Option<&aya::Btf>,
) -> Result<(), SamplerError> {
    let no_btf = || SamplerError::Program {
        name,
        source: ProgramError::Btf(aya::BtfError::FileError {
            path: "/sys/kernel/btf/vmlinux".into(),
            error: io::Error::from(io::ErrorKind::NotFound),
        }),
    };
    let loaded = match name {
        names::CPU_SAMPLE_PROG | names::CPU_SAMPLE_FP_PROG => {
            program::<PerfEvent>(ebpf, name)?.load()
        }
        names::OFF_CPU_START_PROG => {
            let btf = btf.ok_or_else(no_btf)?;
            let p: &mut BtfTracePoint = program(ebpf, name)?;
            p.load("sched_switch", btf)
        }
        names::HTTP_SYS_EXIT_PROG => {
            let btf = btf.ok_or_else(no_btf)?;
            program::<BtfTracePoint>(ebpf, name)?.load("sys_exit", btf)
        }
        names::OFF_CPU_END_PROG | names::PROCESS_EXEC_PROG => {
            let p: &mut RawTracePoint = program(ebpf, name)?;
            p.load()
        }
        names::MMAP_ENTER_PROG | names::MMAP_EXIT_PROG | names::PROCESS_FORK_PROG => {
            program::<TracePoint>(ebpf, name)?.load()
        }
        _ => program::<UProbe>(ebpf, name)?.load(),
    };
    loaded.map_err(|source| load_failed(name, source))
}

/// Tracepoints are attached by their ids under tracefs, which some systems
/// do not mount at boot: mount it where the kernel documents it
/// (`/sys/kernel/tracing`) if neither it nor debugfs's copy is there. A
/// failure shows in the attach that follows.
fn mount_tracefs() {
    let mounted = |dir: &str| std::path::Path::new(dir).join("events").is_dir();
    if mounted("/sys/kernel/tracing") || mounted("/sys/kernel/debug/tracing") {
        return;
    }
    // SAFETY: plain mount(2) with NUL-terminated constant strings.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        log::info!("mounted tracefs at /sys/kernel/tracing");
    }
}

/// Checks that `task:task_newtask` holds the new task's pid and clone flags
/// where [`process_fork`](probe_common::names::PROCESS_FORK_PROG) reads them
/// (`probe_common::TASK_NEWTASK_*`), from the event's format file.
fn task_newtask_format() -> Result<(), String> {
    const FORMAT: &str = "/sys/kernel/tracing/events/task/task_newtask/format";
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(FORMAT)
        .and_then(|f| f.take(64 << 10).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {FORMAT}: {e}"))?;
    check_task_newtask_format(&text)
}

/// [`task_newtask_format`]'s check of the format file's text.
pub(crate) fn check_task_newtask_format(text: &str) -> Result<(), String> {
    let offset_of = |field: &str| {
        text.lines().find_map(|line| {
            let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
            if decl.rsplit(' ').next()? != field {
                return None;
            }
            line.split("offset:")
                .nth(1)?
                .split(';')
                .next()?
                .parse::<usize>()
                .ok()
        })
    };
    for (field, want) in [
        ("pid", probe_common::TASK_NEWTASK_PID),
        ("clone_flags", probe_common::TASK_NEWTASK_CLONE_FLAGS),
    ] {
        match offset_of(field) {
            Some(at) if at == want => {}
            Some(at) => {
                return Err(format!(
                    "task:task_newtask has {field} at offset {at}, not {want}: this kernel's layout is not one crossprof knows"
                ));
            }
            None => return Err(format!("task:task_newtask has no field {field}")),
        }
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, SamplerError> {
    ebpf.take_map(name).ok_or(SamplerError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format of Linux 6.18 (this machine), 6.12 and 6.1 (Debian 12).
    const FORMAT: &str = "name: task_newtask
ID: 205
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;
";

    #[test]
    fn task_newtask_layout_is_checked_field_by_field() {
        assert_eq!(check_task_newtask_format(FORMAT), Ok(()));
        // `common_pid` must not be taken for `pid`.
        let moved = FORMAT.replace("pid_t pid;\toffset:8;", "pid_t pid;\toffset:12;");
        let err = check_task_newtask_format(&moved).unwrap_err();
        assert!(err.contains("pid at offset 12, not 8"), "{err}");
        let older = FORMAT.replace("u64 clone_flags", "unsigned long clone_flags");
        assert_eq!(check_task_newtask_format(&older), Ok(()));
        let gone = FORMAT.replace("clone_flags", "flags");
        assert!(
            check_task_newtask_format(&gone)
                .unwrap_err()
                .contains("no field clone_flags")
        );
    }
}
