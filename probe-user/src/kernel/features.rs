//! What this kernel offers crossprof's programs, asked of the kernel itself
//! where it can answer (a map created, a helper named in a program it is
//! asked to load), else told by its version (distributions backport features:
//! a probe is the truth, the version is the fallback).
//!
//! Probes use the `bpf()` system call directly, with the smallest map or
//! program that shows the feature; nothing they create outlives the probe.

use std::{ffi::CString, fs, os::fd::FromRawFd as _, path::Path};

use super::Version;

/// A kernel feature one of crossprof's modes needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// The kernel's own BTF (`/sys/kernel/btf/vmlinux`): BTF-typed
    /// tracepoints and helpers that return kernel types.
    Btf,
    /// The BPF ring buffer map, every record's way out.
    RingBuffer,
    /// Arrays user space can map (`BPF_F_MMAPABLE`): the unwind tables.
    MmapableArray,
    /// The `bpf_loop` helper: every stack walk but the frame-pointer one.
    BpfLoop,
    /// `bpf_get_current_task_btf`: the current thread's kernel task.
    CurrentTaskBtf,
    /// `bpf_task_pt_regs`: a thread's user registers from the kernel.
    TaskPtRegs,
    /// `bpf_get_attach_cookie`: the goroutine-state probes' per-binary offsets.
    AttachCookie,
    /// BTF-typed tracepoints (`tp_btf`).
    TpBtf,
    /// `sched_switch` passing the previous task's state as its fourth argument.
    SchedSwitchPrevState,
    /// uprobes through perf (`/sys/bus/event_source/devices/uprobe`).
    Uprobes,
}

impl Feature {
    /// Every feature, in the order they are reported.
    pub const ALL: [Feature; 10] = [
        Feature::Btf,
        Feature::RingBuffer,
        Feature::MmapableArray,
        Feature::BpfLoop,
        Feature::CurrentTaskBtf,
        Feature::TaskPtRegs,
        Feature::AttachCookie,
        Feature::TpBtf,
        Feature::SchedSwitchPrevState,
        Feature::Uprobes,
    ];

    /// How a message names it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Btf => "kernel BTF (CONFIG_DEBUG_INFO_BTF)",
            Feature::RingBuffer => "BPF ring buffer",
            Feature::MmapableArray => "mmapable BPF arrays",
            Feature::BpfLoop => "the bpf_loop helper",
            Feature::CurrentTaskBtf => "the bpf_get_current_task_btf helper",
            Feature::TaskPtRegs => "the bpf_task_pt_regs helper",
            Feature::AttachCookie => "the bpf_get_attach_cookie helper",
            Feature::TpBtf => "BTF-typed tracepoints (tp_btf)",
            Feature::SchedSwitchPrevState => "sched_switch's prev_state argument",
            Feature::Uprobes => "uprobes (CONFIG_UPROBE_EVENTS)",
        }
    }

    /// The mainline kernel that brought it.
    pub fn since(self) -> Version {
        let (major, minor) = match self {
            Feature::Btf => (5, 4),
            Feature::RingBuffer => (5, 8),
            Feature::MmapableArray => (5, 5),
            Feature::BpfLoop => (5, 17),
            Feature::CurrentTaskBtf => (5, 11),
            Feature::TaskPtRegs => (5, 15),
            Feature::AttachCookie => (5, 15),
            Feature::TpBtf => (5, 5),
            Feature::SchedSwitchPrevState => (5, 18),
            Feature::Uprobes => (4, 17),
        };
        Version {
            major,
            minor,
            patch: 0,
        }
    }

    /// The short name `CROSSPROF_ASSUME_MISSING` takes (tests of the
    /// degraded paths name the features a kernel should lack).
    pub fn key(self) -> &'static str {
        match self {
            Feature::Btf => "btf",
            Feature::RingBuffer => "ringbuf",
            Feature::MmapableArray => "mmapable",
            Feature::BpfLoop => "bpf_loop",
            Feature::CurrentTaskBtf => "current_task_btf",
            Feature::TaskPtRegs => "task_pt_regs",
            Feature::AttachCookie => "attach_cookie",
            Feature::TpBtf => "tp_btf",
            Feature::SchedSwitchPrevState => "sched_switch_prev_state",
            Feature::Uprobes => "uprobes",
        }
    }
}

/// Helper ids (include/uapi/linux/bpf.h, `__BPF_FUNC_MAPPER`).
const HELPER_GET_CURRENT_TASK_BTF: i32 = 158;
const HELPER_GET_ATTACH_COOKIE: i32 = 174;
const HELPER_TASK_PT_REGS: i32 = 175;
const HELPER_LOOP: i32 = 181;

/// bpf() commands and types (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_PROG_TYPE_PERF_EVENT: u32 = 7;

/// Asks the kernel for `feature`; `None` where no probe can tell (the
/// version decides).
pub fn probe(feature: Feature, btf: &Path) -> Option<bool> {
    match feature {
        Feature::Btf => Some(fs::File::open(btf).is_ok()),
        Feature::RingBuffer => Some(map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0)),
        Feature::MmapableArray => Some(map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1, BPF_F_MMAPABLE)),
        Feature::BpfLoop => helper(BPF_PROG_TYPE_PERF_EVENT, HELPER_LOOP),
        Feature::CurrentTaskBtf => helper(BPF_PROG_TYPE_PERF_EVENT, HELPER_GET_CURRENT_TASK_BTF),
        Feature::TaskPtRegs => helper(BPF_PROG_TYPE_PERF_EVENT, HELPER_TASK_PT_REGS),
        Feature::AttachCookie => helper(BPF_PROG_TYPE_KPROBE, HELPER_GET_ATTACH_COOKIE),
        Feature::Uprobes => Some(
            Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
                || Path::new("/sys/kernel/tracing/uprobe_events").exists()
                || Path::new("/sys/kernel/debug/tracing/uprobe_events").exists(),
        ),
        Feature::TpBtf | Feature::SchedSwitchPrevState => None,
    }
}

/// `union bpf_attr` for BPF_MAP_CREATE, the fields up to `map_flags`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Can a map of this shape be created?
fn map_create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32, flags: u32) -> bool {
    let attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
    };
    bpf(BPF_MAP_CREATE, &attr).is_ok()
}

/// `union bpf_attr` for BPF_PROG_LOAD, the fields up to `kern_version`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
}

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// Does the kernel know helper `id` for programs of `prog_type`? A program
/// that calls it with zero arguments is loaded: the verifier either accepts it
/// or refuses the arguments (the helper exists), or refuses the call itself
/// ("invalid func", "unknown func", or not for this program type).
fn helper(prog_type: u32, id: i32) -> Option<bool> {
    let mov = |reg: u8| Insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
        regs: reg,
        off: 0,
        imm: 0,
    };
    let insns = [
        mov(1),
        mov(2),
        mov(3),
        mov(4),
        mov(5),
        Insn {
            code: 0x85, // BPF_JMP | BPF_CALL
            regs: 0,
            off: 0,
            imm: id,
        },
        mov(0),
        Insn {
            code: 0x95, // BPF_JMP | BPF_EXIT
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = CString::new("GPL").ok()?;
    let mut log = vec![0u8; 4096];
    let attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
    };
    match bpf(BPF_PROG_LOAD, &attr) {
        Ok(()) => Some(true),
        Err(libc::EPERM) => None,
        Err(_) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Some(!helper_refused(&text))
        }
    }
}

/// Does a verifier log say the helper called is unknown or not allowed?
pub fn helper_refused(log: &str) -> bool {
    log.contains("invalid func ")
        || log.contains("unknown func ")
        || log.contains("cannot call helper")
        || log.contains("program of this type cannot use helper")
}

/// The `bpf()` system call with `attr`; a created file descriptor is closed.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<(), i32> {
    // SAFETY: `attr` is a prefix of `union bpf_attr` of the size passed, and
    // stays alive for the call; pointers in it point at live buffers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: the call returned a new file descriptor that nothing else owns.
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_helper_is_told_from_refused_arguments() {
        assert!(helper_refused(
            "0: R1=ctx()\n5: (85) call unknown#181\ninvalid func unknown#181\n"
        ));
        assert!(helper_refused(
            "program of this type cannot use helper bpf_loop#181"
        ));
        assert!(!helper_refused(
            "5: (85) call bpf_loop#181\nR2 type=scalar expected=func\n"
        ));
    }

    #[test]
    fn every_feature_has_a_name_a_key_and_a_version() {
        let mut keys: Vec<&str> = Feature::ALL.iter().map(|f| f.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Feature::ALL.len());
        for f in Feature::ALL {
            assert!(!f.name().is_empty());
            assert!(f.since().major >= 4);
        }
    }
}
