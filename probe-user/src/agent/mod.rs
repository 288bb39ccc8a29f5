//! `crossprof agent`: continuous profiling.
//!
//! The recording pipeline of [`crate::record`] (same kernel programs, same
//! decode -> aggregate -> symbolize stages), run without end and cut into
//! windows: every `--window`, the stacks counted so far are taken out of the
//! aggregator, named (the symbolizer is flushed), folded per process and
//! turned into a pprof profile, then handed to the [`store`] (disk, retention,
//! the latest in memory), and, with `--otlp-endpoint`, to the [`export`]
//! thread as an OTLP request ([`crate::otlp`]). The [`server`] answers HTTP from the store, and asks
//! the loop for on-demand captures (`/debug/pprof/profile?seconds=N`: an extra
//! aggregator every stack also goes to until its end).
//!
//! Processes that start later are sampled from their first sample on (the
//! whole host), named and unwound as in `record` (.NET and Go are recognised
//! when first seen); processes that exit are forgotten, with their rows in
//! the kernel's tables, after the window that holds their last samples is
//! written. Names are dropped and looked up again when more than
//! [`NAMES_CAP`] are held, so memory stays bounded under churn.
//!
//! SIGTERM and SIGINT write the current (partial) window and stop; SIGHUP
//! reopens `--log-file`.

pub mod export;
pub mod grpc;
pub mod logfile;
pub mod outbox;
pub mod server;
pub mod store;
pub mod tls;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{
    server::{Capture, Shared},
    store::{ProcessMeta, Store, Window, WindowMeta, unix_ms, window_id},
};
use crate::{
    aggregate::Aggregator,
    cli::{AgentArgs, Mode},
    error::{Error, UsageError},
    fold::Folded,
    pprof::{self, BuildIds, Kind},
    preflight,
    record::{self, Pipeline},
    session::{Config, Events},
};

/// Names held before they are dropped and looked up again.
pub const NAMES_CAP: usize = 200_000;
/// How often exited processes are looked for.
const EXIT_CHECK: Duration = Duration::from_secs(1);
/// The window being counted is snapshot for the live page and
/// `/api/windows` when asked for, at most this often.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// A .NET process's precompiled (ReadyToRun) code is given to the kernel once
/// it has run this long: a framework's tens of thousands of methods cost
/// ~20 ms of the agent's CPU per process, which processes that live a moment
/// (a few dozen samples at 19 Hz) are not worth. Their samples in
/// precompiled code are walked by frame pointers meanwhile.
const PRECOMPILED_AFTER: Duration = Duration::from_secs(2);

/// The `--comm` names, checked.
fn check_comms(comms: &[String]) -> Result<Vec<String>, UsageError> {
    comms
        .iter()
        .map(|c| {
            if c.is_empty() {
                Err(UsageError::CommEmpty)
            } else if c.len() > 15 {
                Err(UsageError::CommTooLong(c.clone()))
            } else {
                Ok(c.clone())
            }
        })
        .collect()
}

/// Processes running now whose name is one of `comms`.
fn running_with_names(comms: &[String]) -> Vec<u32> {
    if comms.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| comms.iter().any(|n| n == c.trim_end_matches('\n')))
        })
        .collect()
}

/// The bearer token in `path`'s first line.
fn read_token(path: &std::path::Path) -> Result<String, UsageError> {
    read_secret(path, 16, "a token of at least 16 characters")
}

/// The headers every export request carries: `--export-token-file`'s bearer
/// token or `--export-basic-auth-file`'s user and password, and
/// `--tenant-id`.
fn export_headers(args: &AgentArgs) -> Result<Vec<(String, String)>, UsageError> {
    let mut headers = Vec::new();
    if let Some(path) = &args.export_token_file {
        headers.push((
            "Authorization".into(),
            format!("Bearer {}", read_token(path)?),
        ));
    }
    if let Some(path) = &args.export_basic_auth_file {
        let pair = read_secret(path, 3, "USER:PASSWORD")?;
        if !pair.contains(':') {
            return Err(UsageError::TokenFile {
                path: path.clone(),
                why: "its first line must be USER:PASSWORD".into(),
            });
        }
        headers.push((
            "Authorization".into(),
            format!("Basic {}", base64(pair.as_bytes())),
        ));
    }
    if let Some(tenant) = &args.tenant_id {
        headers.push(("X-Scope-OrgID".into(), tenant.clone()));
    }
    Ok(headers)
}

/// Standard base64 with padding (RFC 4648 section 4), for basic
/// authentication.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The first line of the private file `path`, at least `min` characters
/// (`what` says what it must hold).
fn read_secret(path: &std::path::Path, min: usize, what: &str) -> Result<String, UsageError> {
    let bad = |why: String| UsageError::TokenFile {
        path: path.to_path_buf(),
        why,
    };
    // Not through a link, not blocking, and private: a token others can read
    // is no secret.
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file".into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "other users can read or write it (mode {:o}): chmod 600 {}",
            meta.mode() & 0o777,
            path.display()
        )));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 4096), &mut text)
        .map_err(|e| bad(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < min {
        return Err(bad(format!("its first line must hold {what}")));
    }
    Ok(token)
}

/// Destination `name`'s outbox in `dir` (`outbox-NAME`, see
/// [`outbox`]), or none (said in the log: requests then wait in memory).
fn open_outbox(dir: &std::path::Path, name: &str) -> Option<export::Opened> {
    let opened = crate::files::OutFolder::open(dir)
        .and_then(|d| d.subfolder(&format!("outbox-{name}")))
        .map(outbox::Outbox::open);
    match opened {
        Ok(o) => Some(o),
        Err(e) => {
            log::warn!(
                "{name}: no outbox in {} ({e}): requests wait in memory only, and a stop loses them",
                dir.display()
            );
            None
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn agent(args: AgentArgs) -> Result<i32, Error> {
    // 1. Input.
    preflight::check_freq(args.freq)?;
    preflight::check_debug_dirs(&args.debug_dirs)?;
    preflight::check_debuginfod(args.debuginfod)?;
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let headers = export_headers(&args)?;
    let tls = export::TlsFiles::read(
        args.ca_file.as_deref(),
        args.cert_file.as_deref().zip(args.key_file.as_deref()),
    )?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        return Err(UsageError::TokenNeeded(args.listen).into());
    }
    preflight::check_privileges()?;
    preflight::check_pid_namespace()?;
    let mut cfg = Config::of_agent(&args);
    let kernel = preflight::check_kernel(
        record::kernel_needs(&cfg),
        &format!("crossprof agent ({})", record::kernel_request(&cfg)),
    )?;
    if kernel.plan.walk == crate::kernel::Walk::FramePointers {
        cfg.frame_pointers_only = true;
    }
    if let Some(note) = kernel.note() {
        log::warn!("{note}");
    }
    let pids = preflight::resolve_pids(&args.pids)?;
    let select = record::Select {
        skip_self: true,
        comms: check_comms(&args.comms)?,
        cgroups: args
            .cgroups
            .iter()
            .map(|p| crate::containers::cgroup_id(p))
            .chain(crate::containers::container_cgroups(&args.containers))
            .collect::<Result<_, _>>()?,
    };
    // --max-disk covers the whole folder: each destination's outbox may take
    // a quarter of it, the windows the rest.
    let destinations =
        u64::from(args.otlp_endpoint.is_some()) + u64::from(args.pyroscope_url.is_some());
    let outbox_disk = args.max_disk / 4;
    let store = Store::open(
        &args.dir,
        args.retain,
        args.max_disk - destinations * outbox_disk,
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| UsageError::Listen {
            addr: args.listen,
            source,
        })?;
    // The address served, as bound (`--listen 127.0.0.1:0` picks a port).
    let listening = listener.local_addr().unwrap_or(args.listen);
    record::raise_fd_limit();
    // Large buffers (a file read to be parsed, a table built and dropped)
    // come from mmap and go back when freed: glibc otherwise raises its mmap
    // threshold after the first such free and serves the next ones from the
    // heap, where a burst leaves the RSS high for good.
    // SAFETY: mallopt only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }

    // 2. Kernel side.
    let started = record::start(&cfg, &pids, None, &[], &select, kernel).await?;
    let record::Started {
        mut sampler,
        events,
        dotnet_tables,
        unwind_tables,
        processes,
        procs,
        go_preattached: _,
        child: _,
        mut sigint,
        mut sigterm,
        kernel: _,
    } = started;
    let io = |what| move |source| Error::Io { what, source };
    let mut sighup = signal(SignalKind::hangup()).map_err(io("install the SIGHUP handler"))?;
    let mut pipeline = Pipeline::new(
        &cfg,
        procs,
        Some(crate::session::KernelSide {
            processes,
            dotnet: dotnet_tables,
            unwind: unwind_tables,
        }),
        Vec::new(),
        None,
    );
    let mut events = Events::new(events, &mut sampler, &pipeline)?;
    pipeline.procs.dotnet.precompiled_after = PRECOMPILED_AFTER;
    pipeline.procs.dotnet.perf_map = cfg.dotnet_perf_map;
    pipeline.procs.dotnet.no_gc = cfg.dotnet_no_gc;
    // Processes already running under a --comm name: targets now (later ones
    // become targets at their exec, in the kernel).
    let mut pids = pids;
    for pid in running_with_names(&select.comms) {
        sampler.add_target(pid)?;
        pids.push(pid);
    }
    for &pid in &pids {
        pipeline.procs.get_or_capture(pid, "[exited]");
    }
    pipeline.poll_go(&mut sampler);
    crate::session::load_runtime_walks_if_met(&pipeline, &mut sampler);
    sampler.attach()?;

    // 3. The server.
    let (captures_tx, mut captures_rx) = mpsc::unbounded_channel::<Capture>();
    let (snapshots_tx, mut snapshots_rx) =
        mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        captures: captures_tx,
        snapshots: snapshots_tx,
        token,
        mode: if cfg.mode == Mode::Wall {
            "wall"
        } else {
            "cpu"
        },
        sources: [
            Some("cpu"),
            args.off_cpu.then_some("offcpu"),
            args.go_waits.then_some("goblock"),
        ]
        .into_iter()
        .flatten()
        .collect(),
        freq: args.freq,
        status: Mutex::new(server::AgentStatus::default()),
        captures_running: Default::default(),
    });
    tokio::spawn(server::serve(listener, shared.clone()));
    let kind = Kind::of(&cfg);
    logfile::say(&format!(
        "agent: profiling {} at {} Hz{}, windows of {:?} in {}, serving http://{}/",
        if args.pids.is_empty() && select.comms.is_empty() && select.cgroups.is_empty() {
            "the whole host".to_owned()
        } else {
            format!(
                "pids {:?}, names {:?}, cgroups {:?}, containers {:?}",
                args.pids, select.comms, args.cgroups, args.containers
            )
        },
        args.freq,
        match (args.off_cpu, args.go_waits) {
            (true, true) => " with off-CPU time and goroutine waits",
            (true, false) => " with off-CPU time",
            (false, true) => " with goroutine waits",
            (false, false) => "",
        },
        args.window,
        args.dir.display(),
        listening
    ));

    // 4. Windows.
    let mut cutter = Cutter {
        kind,
        build_ids: BuildIds::default(),
        start_ms: unix_ms(),
        start: tokio::time::Instant::now(),
        exited: Vec::new(),
        lost_before: 0,
        windows: 0,
        by_container: args.group_by.contains(&crate::cli::GroupBy::Container),
        exporter: match &args.otlp_endpoint {
            Some(url) => Some(
                export::Exporter::start(
                    export::Destination {
                        name: "otlp",
                        url: match args.otlp_protocol {
                            crate::cli::OtlpProtocol::Http => url.clone(),
                            // gRPC calls its method on the endpoint itself.
                            crate::cli::OtlpProtocol::Grpc => url
                                .strip_suffix(crate::cli::OTLP_PROFILES_PATH)
                                .unwrap_or(url)
                                .to_owned(),
                        },
                        headers: headers.clone(),
                        tls: tls.clone(),
                        grpc: args.otlp_protocol == crate::cli::OtlpProtocol::Grpc,
                    },
                    open_outbox(&args.dir, "otlp"),
                    outbox_disk,
                )
                .map_err(|source| Error::Io {
                    what: "start the OTLP export thread",
                    source,
                })?,
            ),
            None => None,
        },
        otlp_grpc: args.otlp_protocol == crate::cli::OtlpProtocol::Grpc,
        pyroscope: match &args.pyroscope_url {
            Some(url) => Some(Pyroscope {
                exporter: export::Exporter::start(
                    export::Destination {
                        name: "pyroscope",
                        url: url.clone(),
                        headers,
                        tls,
                        grpc: false,
                    },
                    open_outbox(&args.dir, "pyroscope"),
                    outbox_disk,
                )
                .map_err(|source| Error::Io {
                    what: "start the Pyroscope export thread",
                    source,
                })?,
                app_name: args.app_name.clone(),
            }),
            None => None,
        },
        host: crate::otlp::Host::read(),
    };
    if let Some(url) = &args.otlp_endpoint {
        logfile::say(&format!(
            "agent: sending every window to {url} (OTLP profiles)"
        ));
    }
    if let Some(url) = &args.pyroscope_url {
        logfile::say(&format!(
            "agent: sending every window to {url} (Pyroscope, application {})",
            args.app_name
        ));
    }
    let mut captures: Vec<(tokio::time::Instant, f64, Capture)> = Vec::new();
    let mut windows = tokio::time::interval_at(cutter.start + args.window, args.window);
    windows.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_exit_check = tokio::time::Instant::now();
    loop {
        // Back to the scheduler at every turn (see `record`): the server's
        // requests, the signals and the window's timer are seen now, not
        // after a cooperative budget of turns.
        tokio::task::yield_now().await;
        tokio::select! {
            // The stops and the windows first, the samples' turn last.
            biased;
            _ = sighup.recv() => logfile::reopen(),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = windows.tick() => {
                events.drain(&mut pipeline);
                let lost = record::drops(&sampler.counters()) + pipeline.decode_errors;
                cutter.cut(&mut pipeline, &shared.store, lost, !captures.is_empty());
                let unwind = pipeline.kernel.as_ref().map(|k| &k.unwind);
                *shared.status.lock().expect("status") = server::AgentStatus {
                    processes: pipeline.procs.iter().count(),
                    names: pipeline.symbolizer.names.len(),
                    rss_kib: rss_kib(),
                    cpu_seconds: crate::summary::CollectorStats::cpu_now(),
                    lost,
                    windows: cutter.windows,
                    unwind_rows_in_use: unwind.map_or(0, |u| u.rows_in_use()),
                    unwind_rows_freed: unwind.map_or(0, |u| u.rows_freed),
                    unwind_files_refused: unwind.map_or(0, |u| u.files_refused),
                    kernel_load: Some(sampler.kernel_load()),
                    otlp: cutter.exporter.as_ref().and_then(export::Exporter::status),
                    pyroscope: cutter.pyroscope.as_ref().and_then(|p| p.exporter.status()),
                };
            }
            Some(reply) = snapshots_rx.recv() => {
                events.drain(&mut pipeline);
                let lost = record::drops(&sampler.counters()) + pipeline.decode_errors;
                cutter.snapshot(&mut pipeline, &shared.store, lost);
                let _ = reply.send(());
            }
            Some(capture) = captures_rx.recv() => {
                let end = tokio::time::Instant::now() + Duration::from_secs_f64(capture.seconds);
                pipeline.taps.push(Aggregator::default());
                captures.push((end, capture.seconds, capture));
            }
            tick = events.next(&mut pipeline, &mut sampler) => {
                if !tick {
                    continue;
                }
                let now = tokio::time::Instant::now();
                // A capture whose client hung up is dropped at once: its
                // stacks are no one's (an abandoned 600 s capture kept every
                // sample's frames and held back the agent's memory bounds).
                while let Some(i) = captures.iter().position(|(_, _, c)| c.reply.is_closed()) {
                    captures.remove(i);
                    pipeline.taps.remove(i);
                }
                while let Some(i) = captures.iter().position(|(end, _, _)| *end <= now) {
                    let (_, secs, capture) = captures.remove(i);
                    let tap = pipeline.taps.remove(i);
                    let data = cutter.capture(&mut pipeline, &tap, secs);
                    let _ = capture.reply.send(data);
                }
                if now - last_exit_check >= EXIT_CHECK {
                    last_exit_check = now;
                    for pid in cutter.note_exits(&mut pipeline) {
                        sampler.remove_target(pid);
                    }
                }
            }
        }
    }
    // 5. The last window, partial, and what captures had.
    events.drain(&mut pipeline);
    pipeline.count_waiting(u64::MAX);
    let lost = record::drops(&sampler.counters()) + pipeline.decode_errors;
    for (i, (_, secs, capture)) in captures.into_iter().enumerate() {
        let tap = std::mem::take(&mut pipeline.taps[i]);
        let data = cutter.capture(&mut pipeline, &tap, secs);
        let _ = capture.reply.send(data);
    }
    cutter.cut(&mut pipeline, &shared.store, lost, false);
    let finished = [
        ("OTLP", "windows", cutter.exporter.take()),
        (
            "Pyroscope",
            "process windows",
            cutter.pyroscope.take().map(|p| p.exporter),
        ),
    ];
    for (name, unit, exporter) in finished {
        let Some(exporter) = exporter else { continue };
        let s = exporter.finish();
        logfile::say(&format!(
            "agent: {name}: {} {unit} sent to {} ({} bytes), {} dropped, {} not sent{}",
            s.sent,
            s.url,
            s.bytes_sent,
            s.dropped,
            s.queued,
            s.last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    drop(events);
    sampler.detach_mmap_tracepoints_in_background();
    drop(sampler);
    pipeline.procs.release_dotnet();
    logfile::say("agent: stopped; the last window is written");
    Ok(0)
}

/// Cuts windows and captures out of the pipeline.
struct Cutter {
    kind: Kind,
    build_ids: BuildIds,
    /// The current window's start.
    start_ms: u64,
    start: tokio::time::Instant,
    /// Processes that exited, forgotten after the next window.
    exited: Vec<u32>,
    /// Samples lost before the current window.
    lost_before: u64,
    /// Windows cut.
    windows: u64,
    /// `--group-by container`: stacks under their container.
    by_container: bool,
    /// `--otlp-endpoint`: where every window also goes.
    exporter: Option<export::Exporter>,
    /// `--otlp-protocol grpc`.
    otlp_grpc: bool,
    /// `--pyroscope-url`: where every process's window also goes.
    pyroscope: Option<Pyroscope>,
    /// This host, for the OTLP resource.
    host: crate::otlp::Host,
}

/// `--pyroscope-url`'s sending.
struct Pyroscope {
    exporter: export::Exporter,
    /// The ingest URL (`.../ingest`).
    /// `--app-name`.
    app_name: String,
}

/// This process's resident memory, KiB (`/proc/self/statm`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

impl Cutter {
    /// Retires the processes that exited since the last look (their state
    /// but their name goes now; they are forgotten after the next window);
    /// returns them.
    fn note_exits(&mut self, pipeline: &mut Pipeline) -> Vec<u32> {
        let gone: Vec<u32> = pipeline
            .procs
            .iter()
            .map(|p| p.pid)
            .filter(|&pid| pid != 0 && !crate::sys::alive(pid) && !self.exited.contains(&pid))
            .collect();
        for &pid in &gone {
            pipeline.retire(pid);
            self.exited.push(pid);
        }
        gone
    }

    /// A capture's gzipped pprof profile.
    fn capture(&mut self, pipeline: &mut Pipeline, tap: &Aggregator, secs: f64) -> Vec<u8> {
        pipeline.symbolizer.flush();
        let span = pprof::Span {
            start_unix_ns: (unix_ms().saturating_sub((secs * 1000.0) as u64) * 1_000_000) as i64,
            duration_ns: (secs * 1e9) as i64,
        };
        let data = pprof::build(
            tap.stacks(),
            &pipeline.symbolizer.names,
            &pipeline.procs,
            &mut self.build_ids,
            self.kind,
            span,
        );
        pprof::gzip(&data)
    }

    /// The window of `agg`'s stacks (named as far as the symbolizer has
    /// got), from the current window's start to `end_ms`; its pprof profile
    /// only with `pprof` (a snapshot of the window being counted has none).
    fn window(
        &mut self,
        agg: &Aggregator,
        pipeline: &Pipeline,
        lost: u64,
        end_ms: u64,
        pprof: bool,
    ) -> Window {
        let names = &pipeline.symbolizer.names;
        let procs = &pipeline.procs;
        let by_pid: BTreeMap<u32, Folded> = crate::fold::fold_by_process(
            agg.stacks(),
            |pid| record::roots_of(procs, pid, self.by_container),
            names,
            procs,
        );
        let mut processes: Vec<ProcessMeta> = by_pid
            .iter()
            .map(|(&pid, folded)| ProcessMeta {
                pid,
                comm: procs.name_of(pid),
                runtime: procs
                    .runtime(pid)
                    .map_or("unknown", crate::runtime::Runtime::name),
                // Folding merges stacks, never counts: the process's samples.
                samples: folded.stacks.values().sum(),
                goroutine_states: procs.go_window_states(pid),
            })
            .collect();
        // A Go process whose goroutines all waited (no sample) has its
        // states listed still.
        for pid in procs.go_window_sampled() {
            if !by_pid.contains_key(&pid) {
                processes.push(ProcessMeta {
                    pid,
                    comm: procs.name_of(pid),
                    runtime: crate::runtime::Runtime::Go.name(),
                    samples: 0,
                    goroutine_states: procs.go_window_states(pid),
                });
            }
        }
        let mut lines: BTreeMap<&str, u64> = BTreeMap::new();
        for f in by_pid.values() {
            for (line, &n) in &f.stacks {
                *lines.entry(line.as_str()).or_insert(0) += n;
            }
        }
        let mut folded_text = Vec::new();
        for (line, n) in lines {
            folded_text.extend_from_slice(format!("{line} {n}\n").as_bytes());
        }
        processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
        let span = pprof::Span {
            start_unix_ns: (self.start_ms * 1_000_000) as i64,
            duration_ns: (self.start.elapsed().as_nanos()) as i64,
        };
        let profile = if pprof {
            pprof::gzip(&pprof::build(
                agg.stacks(),
                names,
                procs,
                &mut self.build_ids,
                self.kind,
                span,
            ))
        } else {
            Vec::new()
        };
        Window {
            meta: WindowMeta {
                id: window_id(self.start_ms),
                start_unix_ms: self.start_ms,
                end_unix_ms: end_ms,
                samples: agg.samples,
                lost: lost.saturating_sub(self.lost_before),
                processes,
                bytes: 0,
                on_disk: false,
                in_memory: false,
                partial: false,
            },
            by_pid,
            pprof: profile,
            folded: folded_text,
        }
    }

    /// Keeps a snapshot of the window being counted in `store` (for the live
    /// page and `/api/windows` before the window ends), unless the last is
    /// younger than [`SNAPSHOT_EVERY`]: taken only when asked for.
    fn snapshot(&mut self, pipeline: &mut Pipeline, store: &Mutex<Store>, lost: u64) {
        let now = unix_ms();
        let fresh = store
            .lock()
            .expect("store")
            .current_at_ms()
            .is_some_and(|at| now.saturating_sub(at) < SNAPSHOT_EVERY.as_millis() as u64);
        if fresh {
            return;
        }
        pipeline.symbolizer.flush();
        let window = self.window(&pipeline.agg, pipeline, lost, now, false);
        store.lock().expect("store").set_current(window);
    }

    /// Sends each process's stacks of the window that ran from `start_ms` to
    /// `end_ms` to Pyroscope, a request each.
    fn push_pyroscope(
        &mut self,
        agg: &crate::aggregate::Aggregator,
        pipeline: &Pipeline,
        start_ms: u64,
        end_ms: u64,
    ) {
        use crate::pyroscope::{ProcessFacts, app_name, ingest_query, multipart, series_name};
        let Some(py) = &self.pyroscope else {
            return;
        };
        let span = pprof::Span {
            start_unix_ns: (start_ms * 1_000_000) as i64,
            duration_ns: (end_ms.saturating_sub(start_ms) * 1_000_000) as i64,
        };
        let config = crate::pyroscope::sample_type_config(&self.kind.sample_types());
        // The window's stacks by process, grouped once (not one pass over
        // every stack per process).
        let mut by_pid: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
        for (key, n) in agg.stacks() {
            by_pid.entry(key.pid).or_default().push((key, n));
        }
        for (pid, stacks) in by_pid {
            let profile = pprof::gzip(&pprof::build(
                stacks,
                &pipeline.symbolizer.names,
                &pipeline.procs,
                &mut self.build_ids,
                self.kind,
                span,
            ));
            let p = pipeline.procs.get(pid);
            let container = p.and_then(|p| p.container.as_deref());
            let facts = ProcessFacts {
                pid,
                comm: p.map_or("", |p| &p.name),
                exe: p.and_then(|p| p.exe.as_deref()),
                host: &self.host.name,
                container_id: container.map(|c| c.id.as_str()),
                pod_uid: container.and_then(|c| c.pod_uid.as_deref()),
            };
            let app = app_name(&py.app_name, &facts);
            let (content_type, body) = multipart(&[
                ("profile", &profile),
                ("sample_type_config", config.as_bytes()),
            ]);
            py.exporter.push(export::Request {
                query: ingest_query(
                    &series_name(&app, &facts),
                    start_ms / 1000,
                    end_ms.div_ceil(1000),
                ),
                content_type,
                body,
                gzip: false,
            });
        }
    }

    /// Ends the current window: names, folds, profiles and stores it, then
    /// forgets exited processes (unless a capture still counts their stacks).
    fn cut(&mut self, pipeline: &mut Pipeline, store: &Mutex<Store>, lost: u64, capturing: bool) {
        let end_ms = unix_ms();
        let agg = pipeline.agg.take_stacks();
        pipeline.symbolizer.flush();
        let window = self.window(&agg, pipeline, lost, end_ms, true);
        if let Some(exporter) = &self.exporter {
            let span = pprof::Span {
                start_unix_ns: (window.meta.start_unix_ms * 1_000_000) as i64,
                duration_ns: (end_ms.saturating_sub(window.meta.start_unix_ms) * 1_000_000) as i64,
            };
            let request = crate::otlp::build(
                agg.stacks(),
                &pipeline.symbolizer.names,
                &pipeline.procs,
                &mut self.build_ids,
                self.kind,
                span,
                &self.host,
            );
            // A window with no sample (all targets idle) sends nothing.
            if !request.resource_profiles.is_empty() {
                exporter.push(export::Request {
                    query: String::new(),
                    content_type: "application/x-protobuf".into(),
                    body: prost::Message::encode_to_vec(&request),
                    // gRPC compresses its messages itself.
                    gzip: !self.otlp_grpc,
                });
            }
        }
        if self.pyroscope.is_some() {
            self.push_pyroscope(&agg, pipeline, window.meta.start_unix_ms, end_ms);
        }
        pipeline.procs.go_new_window();
        store.lock().expect("store").add(window);
        self.lost_before = lost;
        self.windows += 1;
        self.start_ms = end_ms;
        self.start = tokio::time::Instant::now();
        // Bounded memory: exited processes go, and names when too many.
        if !capturing {
            for pid in std::mem::take(&mut self.exited) {
                pipeline.forget(pid);
            }
            if pipeline.symbolizer.names.len() > NAMES_CAP {
                pipeline.symbolizer.names.clear();
                pipeline.agg.forget_seen();
            }
        }
        // What the window and exited processes freed goes back to the system
        // (glibc keeps freed heap pages otherwise: the RSS would ratchet up
        // with every burst of new processes).
        // SAFETY: malloc_trim only walks and trims the allocator's own arenas.
        unsafe { libc::malloc_trim(0) };
    }
}
