//! The end of a recording: names for the last frames, then the outputs
//! (folded, pprof, speedscope, SVG, timeline), each written whole or not at
//! all, then `summary.json` and the lines on stderr.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    time::Instant,
};

use probe_common::{COUNTER_SLOTS, Counter};

use super::{
    FOLDED_FILE, SUMMARY_FILE, SVG_FILE, drops, lost_breakdown, roots_of, share, title, total,
};
use crate::{
    cli::{Format, GroupBy, Mode, RecordArgs},
    error::Error,
    fold::write_folded,
    frame::FrameRef,
    preflight::{KernelPlan, OutputDir},
    render::render_svg,
    session::{Config, Pipeline},
    summary::{CollectorStats, KernelProgramStats, ProcessSummary, Summary},
};

/// What a recording left once it stopped, besides its pipeline.
pub(super) struct Ended<'a> {
    pub(super) args: &'a RecordArgs,
    pub(super) cfg: &'a Config,
    /// The targets given (`--pid`).
    pub(super) pids: &'a [u32],
    pub(super) out: &'a OutputDir,
    pub(super) kernel: &'a KernelPlan,
    /// The kernel's counters at the stop.
    pub(super) counters: [u64; COUNTER_SLOTS as usize],
    /// `(run_count, run_time_ns)` of the sampler, the Go probes and the
    /// request program (with `kernel.bpf_stats_enabled`).
    pub(super) program_stats: Option<(u64, u64)>,
    pub(super) go_program_stats: Option<(u64, u64)>,
    pub(super) http_program_stats: Option<(u64, u64)>,
    /// What loading the programs cost; why the Go and .NET walks were
    /// refused, if they were.
    pub(super) kernel_load: crate::summary::KernelLoad,
    pub(super) runtime_walks_refused: Option<String>,
    pub(super) start: Instant,
    pub(super) stopped_at: Instant,
    pub(super) started_unix_ns: i64,
    /// The collector's CPU seconds while recording.
    pub(super) recording_cpu: f64,
    /// The command's, as a shell reports it.
    pub(super) command_exit_status: Option<i32>,
}

/// Names the last frames, writes every output and the summary, and prints
/// the report; returns the exit status crossprof should end with.
pub(super) fn finish(pipeline: Pipeline, ended: Ended<'_>) -> Result<i32, Error> {
    let Ended {
        args,
        cfg,
        pids,
        out,
        kernel,
        counters,
        program_stats,
        go_program_stats,
        http_program_stats,
        kernel_load,
        runtime_walks_refused,
        start,
        stopped_at,
        started_unix_ns,
        recording_cpu,
        command_exit_status,
    } = ended;
    let phase = |what: &str| log::debug!("stop +{:?}: {what}", stopped_at.elapsed());
    let duration = stopped_at - start;
    let Pipeline {
        procs,
        agg,
        mut symbolizer,
        decode_errors,
        off_cpu_us,
        go_wait_us,
        timeline,
        requests,
        go_states_failed,
        kernel: kernel_side,
        unwind_tables_error,
        fp_baseline,
        ..
    } = pipeline;
    // A failed write (a full disk) takes back what was written: outputs are
    // whole or absent.
    let failed = |e: Error| out.abandon(e, command_exit_status);
    let unwind = kernel_side.as_ref().map(|k| &k.unwind);
    symbolizer.finish();
    phase("every frame named");
    let names = &symbolizer.names;
    let by_container = cfg.group_by.contains(&GroupBy::Container);
    let folded = crate::fold::fold_under(
        agg.stacks(),
        |pid| roots_of(&procs, pid, by_container),
        names,
        &procs,
    );
    if args.formats.contains(&Format::Folded) {
        out.write_atomic(FOLDED_FILE, |w| write_folded(&folded, w))
            .map_err(failed)?;
    }
    if args.formats.contains(&Format::Pprof) {
        let kind = crate::pprof::Kind::of(cfg);
        let span = crate::pprof::Span {
            start_unix_ns: started_unix_ns,
            duration_ns: (stopped_at - start).as_nanos() as i64,
        };
        let profile = crate::pprof::build(
            agg.stacks(),
            names,
            &procs,
            &mut crate::pprof::BuildIds::default(),
            kind,
            span,
        );
        out.write_atomic(crate::pprof::FILE, |w| {
            w.write_all(&crate::pprof::gzip(&profile))
        })
        .map_err(failed)?;
    }
    if let crate::replay::source::ProcSource::Capturing(capture) = &procs.source {
        let kernel_addrs = agg
            .stacks()
            .flat_map(|(key, _)| key.frames.iter())
            .filter_map(|f| match *f {
                FrameRef::Kernel(addr) => Some(addr),
                _ => None,
            })
            .collect();
        let finished = capture
            .lock()
            .map_err(|_| "a thread writing it panicked".to_owned())
            .and_then(|mut c| c.finish(&kernel_addrs).map_err(|e| e.to_string()));
        if let Err(e) = finished {
            log::warn!("the capture is incomplete: {e}");
        }
    }
    let complete = crate::roots::completeness(agg.stacks(), names, &procs);
    // Per process: (rooted, walked) of the frame-pointer walks of the same run.
    let fp_complete: HashMap<u32, (u64, u64)> = fp_baseline
        .iter()
        .map(|(&pid, frames)| {
            let rooted = frames
                .iter()
                .filter(|(f, _)| crate::roots::frame_is_root(**f, names, &procs))
                .map(|(_, n)| n)
                .sum();
            (pid, (rooted, frames.values().sum()))
        })
        .collect();
    let lost = drops(&counters) + decode_errors;
    let title = title(args, pids);
    let subtitle = match cfg.mode {
        Mode::Cpu => format!(
            "{} samples at {} Hz over {:.1} s, {} lost",
            agg.samples,
            cfg.freq,
            duration.as_secs_f64(),
            lost
        ),
        Mode::Offcpu => format!(
            "off-CPU time in µs: {:.3} s in {} spans of {} µs or more over {:.1} s, {} lost",
            off_cpu_us as f64 / 1e6,
            agg.samples,
            cfg.min_block,
            duration.as_secs_f64(),
            lost
        ),
        Mode::Wall => format!(
            "wall-clock time in µs per thread (and goroutine): on-CPU samples at {} Hz, off-CPU spans and goroutine waits over {:.1} s, {} lost",
            cfg.freq,
            duration.as_secs_f64(),
            lost
        ),
        Mode::Goblock => format!(
            "goroutine waits in µs: {:.3} s in {} waits of {} µs or more over {:.1} s, {} lost",
            go_wait_us as f64 / 1e6,
            agg.samples,
            cfg.min_go_wait,
            duration.as_secs_f64(),
            lost
        ),
    };
    let count_name = if cfg.mode == Mode::Cpu {
        "samples"
    } else {
        "µs"
    };
    if args.formats.contains(&Format::Speedscope) {
        let unit = if cfg.mode == Mode::Cpu {
            "none"
        } else {
            "microseconds"
        };
        // One profile per process: stacks folded per pid (the folded file
        // merges processes of one name).
        let profiles: Vec<(String, crate::fold::Folded)> = crate::fold::fold_by_process(
            agg.stacks(),
            |pid| vec![procs.name_of(pid)],
            names,
            &procs,
        )
        .into_iter()
        .map(|(pid, folded)| (format!("{} ({pid})", procs.name_of(pid)), folded))
        .collect();
        out.write_atomic(crate::speedscope::FILE, |w| {
            crate::speedscope::write(&profiles, &title, unit, w)
        })
        .map_err(failed)?;
    }
    let svg = if args.formats.contains(&Format::Svg) {
        out.write_atomic(SVG_FILE, |w| {
            render_svg(&folded, &title, &subtitle, count_name, w)
        })
        .map_err(failed)?
    } else {
        args.output.clone()
    };
    let stop_to_svg = stopped_at.elapsed();

    let mut procs = procs;
    // Every process sampled (or whose goroutines were followed), each
    // runtime adding what it knows of it.
    let mut processes: Vec<ProcessSummary> = procs
        .iter()
        .filter(|p| p.samples > 0 || p.go.states.is_some())
        .map(|p| ProcessSummary {
            pid: p.pid,
            comm: p.name.to_string(),
            exe: p.exe.clone(),
            container_id: p.container.as_ref().map(|c| c.id.clone()),
            pod_uid: p.container.as_ref().and_then(|c| c.pod_uid.clone()),
            samples: p.samples,
            stacks_complete: complete.get(&p.pid).and_then(share),
            stacks_complete_frame_pointers: fp_complete.get(&p.pid).and_then(share),
            user_stack_ends: p.stack_ends.counted(),
            ..ProcessSummary::default()
        })
        .collect();
    for summary in &mut processes {
        crate::dotnet::report::describe(&procs, summary);
        crate::go::table::describe(&mut procs, summary);
    }
    processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    let notes: Vec<String> = crate::dotnet::report::notes(&procs)
        .into_iter()
        .chain(crate::go::table::layout_notes(&procs))
        .chain(kernel.note())
        .chain({
            let lost = counters[probe_common::Counter::ChildrenLost as usize];
            (lost > 0).then(|| {
                format!(
                    "{lost} processes started by the targets were not profiled: the kernel's target set is full ({} processes)",
                    probe_common::MAX_TARGETS
                )
            })
        })
        .chain(unwind_tables_error)
        .chain(runtime_walks_refused.map(|why| {
            format!("the Go and .NET walks were refused ({why}): their processes' stacks were walked by unwind rules and frame pointers only, without goroutines")
        }))
        .chain(go_states_failed.into_iter().map(|(process, why)| {
            format!("{process}: goroutine states not followed: {why}")
        }))
        .chain(crate::go::table::table_notes(&procs))
        .collect();
    if let Some(t) = &timeline {
        let gc: BTreeMap<u32, Vec<(u64, u64)>> = procs
            .iter()
            .filter_map(|p| {
                let stats = p.dotnet.as_ref()?.gc_stats()?;
                Some((p.pid, stats.pause_spans.clone()))
            })
            .collect();
        let trace = t.to_json(names, &procs, |pid| procs.name_of(pid), &gc);
        out.write_atomic(crate::timeline::FILE, |w| {
            serde_json::to_writer(&mut *w, &trace)?;
            writeln!(w)
        })
        .map_err(failed)?;
    }
    let summary = Summary {
        timeline_events_dropped: timeline.as_ref().map(|t| t.dropped),
        slow_requests: cfg.slow_ms.map(|_| requests.slow.clone()),
        http_requests: cfg.group_by.contains(&GroupBy::Trace).then(|| {
            BTreeMap::from([
                ("traced", requests.traced),
                ("untraced", requests.untraced),
                ("partial", requests.partial),
                ("overflow", requests.overflow),
                ("sent", requests.sent),
                ("inherited", requests.inherited),
                ("causes_dropped", requests.causes_dropped),
            ])
        }),
        mode: match cfg.mode {
            Mode::Cpu => "cpu",
            Mode::Offcpu => "offcpu",
            Mode::Wall => "wall",
            Mode::Goblock => "goblock",
        },
        off_cpu_us: cfg.off_cpu.then_some(off_cpu_us),
        go_wait_us: cfg.go_waits.then_some(go_wait_us),
        duration_secs: duration.as_secs_f64(),
        frequency_hz: cfg.freq,
        kernel: kernel.summary(),
        samples: agg.samples,
        lost,
        decode_errors,
        counters: Counter::ALL
            .iter()
            .map(|&c| (c.name(), counters[c as usize]))
            .collect::<BTreeMap<_, _>>(),
        distinct_stacks: agg.distinct(),
        unnamed_frames: names.unnamed,
        processes,
        collector: CollectorStats::now(recording_cpu),
        kernel_symbols: symbolizer.kernel_read,
        kernel_program: program_stats.map(|(run_count, run_time_ns)| KernelProgramStats {
            run_count,
            run_time_ns,
        }),
        stacks_complete: share(&total(complete.values())),
        frame_pointer_baseline: {
            let counts = total(fp_complete.values());
            share(&counts).map(|stacks_complete| crate::summary::FpBaseline {
                samples: counts.1,
                stacks_complete,
            })
        },
        unwind_table_rows: unwind.map_or(0, |u| u.rows_written),
        unwind_rows_freed: unwind.map_or(0, |u| u.rows_freed),
        unwind_files_refused: unwind.map_or(0, |u| u.files_refused),
        unwind_objects: unwind
            .map(|u| u.objects())
            .unwrap_or_default()
            .into_iter()
            .map(|(path, rows, pages)| crate::summary::UnwindObject {
                path,
                rows,
                bytes: u64::from(rows) * size_of::<probe_common::native::UnwindRow>() as u64
                    + u64::from(pages) * size_of::<probe_common::native::UnwindPage>() as u64,
            })
            .collect(),
        go_state_probes: go_program_stats.map(|(run_count, run_time_ns)| KernelProgramStats {
            run_count,
            run_time_ns,
        }),
        kernel_load,
        http_program: http_program_stats.map(|(run_count, run_time_ns)| KernelProgramStats {
            run_count,
            run_time_ns,
        }),
        transitions: folded.edges.clone(),
        startup_ms: crate::summary::since_process_start(start).as_secs_f64() * 1e3,
        stop_to_svg_ms: stop_to_svg.as_secs_f64() * 1e3,
        command_exit_status,
        notes,
    };
    out.write_atomic(SUMMARY_FILE, |w| {
        serde_json::to_writer_pretty(&mut *w, &summary)?;
        writeln!(w)
    })
    .map_err(failed)?;

    if args.only_transitions {
        crate::kinds::write_edges(&summary.transitions, &mut std::io::stdout().lock()).map_err(
            |source| Error::Write {
                path: "stdout".into(),
                source,
            },
        )?;
    }
    if cfg.off_cpu {
        eprintln!(
            "crossprof: {:.3} s off-CPU in {} spans of {} µs or more",
            off_cpu_us as f64 / 1e6,
            counters[Counter::OffCpuSpans as usize]
                .saturating_sub(counters[Counter::OffCpuShort as usize]),
            cfg.min_block
        );
    }
    if cfg.go_waits && go_wait_us > 0 {
        eprintln!(
            "crossprof: {:.3} s of goroutine waits in {} waits of {} µs or more",
            go_wait_us as f64 / 1e6,
            counters[Counter::GoBlocks as usize],
            cfg.min_go_wait
        );
    }
    eprintln!(
        "crossprof: {} samples ({} lost) from {} process{} in {:.1} s at {} Hz -> {}",
        summary.samples,
        lost,
        summary.processes.len(),
        if summary.processes.len() == 1 {
            ""
        } else {
            "es"
        },
        summary.duration_secs,
        cfg.freq,
        svg.display()
    );
    if let (Some(complete), Some(fp)) = (summary.stacks_complete, &summary.frame_pointer_baseline) {
        eprintln!(
            "crossprof: stacks complete: {:.1}% (frame pointers only, same run, {} samples: {:.1}%)",
            complete * 100.0,
            fp.samples,
            fp.stacks_complete * 100.0
        );
    }
    for note in &summary.notes {
        eprintln!("crossprof: note: {note}");
    }
    if summary.samples == 0 {
        eprintln!(
            "crossprof: note: no samples: the target{} did not run on a CPU while recording",
            if pids.len() > 1 { "s" } else { "" }
        );
    }
    if lost > 0 {
        eprintln!(
            "crossprof: note: {lost} samples were lost ({}); see summary.json",
            lost_breakdown(&counters, decode_errors)
        );
    }
    Ok(command_exit_status.unwrap_or(0))
}
