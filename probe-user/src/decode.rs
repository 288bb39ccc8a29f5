//! Ring-buffer record decoding. The layouts are `probe_common`'s; this is the one
//! place that reads them from bytes, with every length checked, so that a short or
//! corrupt record is an error that gets counted, never a wrong sample.

use bytes::Buf as _;
use probe_common::{
    RecordKind,
    go::{Creation, Goroutine, GoroutineEnd, MAX_SWITCH_FRAMES, WAIT_SLOTS, slot},
    native::{FLAG_FP_BASELINE, MAX_FRAMES, STACK_TOP_WORDS, SampleHeader},
};

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An on-CPU sample, or the stacks of a thread that ran again after an
    /// off-CPU span (`Sample::off_cpu`).
    CpuSample(Sample),
    /// A tracked goroutine ended.
    GoroutineEnd {
        /// Its process.
        pid: u32,
        /// When (CLOCK_MONOTONIC ns).
        end_ns: u64,
        /// Its time per status.
        g: Goroutine,
    },
    /// A target read or wrote the start of an HTTP request or response.
    Http {
        /// Process.
        pid: u32,
        /// Thread.
        tid: u32,
        /// Goroutine (0: none).
        goid: u64,
        /// Which, with a request's first bytes.
        what: HttpWhat,
        /// When (CLOCK_MONOTONIC ns).
        time_ns: u64,
    },
    /// A goroutine created by another one got its id (request attribution).
    GoroutineStart {
        /// Its process.
        pid: u32,
        /// Its id.
        goid: u64,
        /// Its creator's id.
        parent_goid: u64,
    },
    /// A process mapped a file's code (`dlopen`): its maps are read again.
    MapsChanged {
        /// The process.
        pid: u32,
    },
    /// A target has just `exec`'d a new program: read it now.
    Exec {
        /// The process.
        pid: u32,
    },
}

/// What an [`Record::Http`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpWhat {
    /// A server read the start of a request (its first bytes).
    Request(Vec<u8>),
    /// A server wrote the start of its response.
    Response,
    /// A client wrote the start of a request (its first bytes).
    RequestSent(Vec<u8>),
    /// A client read the start of the response.
    ResponseRead,
}

/// An off-CPU span, as its end record tells it (see `probe_common::offcpu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpu {
    /// Nanoseconds away from the CPU.
    pub ns: u64,
    /// The thread's state bits when it left (`probe_common::offcpu`).
    pub state: u16,
    /// The system call it was in, plus one (0: none).
    pub syscall: u16,
}

/// A goroutine's wait, as its end record tells it (`probe_common::go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoBlock {
    /// Nanoseconds from parking to being made runnable.
    pub ns: u64,
    /// Its wait reason (`g.waitreason`, numbered per Go release).
    pub reason: u32,
}

/// An on-CPU sample with both stacks, leaf first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU.
    pub cpu: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    /// The thread's comm, NUL padding removed.
    pub comm: [u8; 16],
    /// `probe_common::native::FLAG_*` bits.
    pub flags: u32,
    /// The first words at the user stack pointer (0 where unreadable).
    pub stack_top: [u64; STACK_TOP_WORDS],
    /// The goroutine, in a Go process (0: none or unknown).
    pub goid: u64,
    /// Its `g.labels` pointer (0: none).
    pub go_labels: u64,
    /// Its status (`probe_common::go::status`; 0 when there is no goroutine).
    pub go_status: u32,
    /// On a Go system stack: the frames of the goroutine it works for, leaf
    /// first (see `probe_common::go::GoSample::switch_frames`).
    pub go_switch: Vec<u64>,
    /// In a Go signal handler: the PC the signal interrupted (0: none).
    pub go_signal_pc: u64,
    /// A frame-pointer walk of the same stack, for the baseline (one sample
    /// in `FP_BASELINE_EVERY` of those walked by rules): its outermost frame
    /// (0 if none) and its frame count.
    pub fp_baseline: Option<(u64, u32)>,
    /// For the end of an off-CPU span (`--mode offcpu`, `wall`): how long the
    /// thread was away and why; `None` for an on-CPU sample.
    pub off_cpu: Option<OffCpu>,
    /// For a goroutine made runnable after waiting (`--mode goblock`): how
    /// long and why; its frames are those it parked in (in `user`).
    pub go_block: Option<GoBlock>,
    /// Kernel frames, leaf first.
    pub kernel: Vec<u64>,
    /// User frames, leaf first.
    pub user: Vec<u64>,
}

impl Sample {
    /// The comm as text, up to its first NUL.
    pub fn comm_str(&self) -> String {
        comm_to_string(&self.comm)
    }
}

/// A NUL-padded comm as text.
pub fn comm_to_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    // A thread names itself: escaped for every output.
    crate::frame::sanitize(&String::from_utf8_lossy(&comm[..end])).into_owned()
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its fixed part or than its frame counts say.
    #[error("record of {len} bytes is too short: {need} needed")]
    Short {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A tag this build does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    /// More frames than the kernel side can ever write.
    #[error("record claims {0} frames, more than the kernel side writes")]
    TooManyFrames(usize),
}

/// Decodes one ring-buffer record.
pub fn decode(mut buf: &[u8]) -> Result<Record, DecodeError> {
    const HEADER: usize = size_of::<SampleHeader>();
    if buf.len() < 4 {
        return Err(DecodeError::Short {
            len: buf.len(),
            need: 4,
        });
    }
    let len = buf.len();
    let kind = (&buf[..4]).get_u32_le();
    match RecordKind::from_u32(kind) {
        Some(RecordKind::CpuSample | RecordKind::OffCpuSample | RecordKind::GoBlockSample) => {}
        Some(RecordKind::GoroutineEnd) => return decode_goroutine_end(buf),
        Some(RecordKind::GoroutineStart) => {
            let need = size_of::<probe_common::go::GoroutineStart>();
            if len < need {
                return Err(DecodeError::Short { len, need });
            }
            buf.advance(4);
            let pid = buf.get_u32_le();
            let goid = buf.get_u64_le();
            let parent_goid = buf.get_u64_le();
            return Ok(Record::GoroutineStart {
                pid,
                goid,
                parent_goid,
            });
        }
        Some(
            kind @ (RecordKind::HttpRequest
            | RecordKind::HttpResponse
            | RecordKind::HttpRequestSent
            | RecordKind::HttpResponseRead),
        ) => {
            let need = probe_common::http::HTTP_HEADER_BYTES;
            if len < need {
                return Err(DecodeError::Short { len, need });
            }
            buf.advance(4);
            let pid = buf.get_u32_le();
            let tid = buf.get_u32_le();
            let n = buf.get_u32_le() as usize;
            let time_ns = buf.get_u64_le();
            let goid = buf.get_u64_le();
            let bytes = || buf[..n.min(probe_common::http::HTTP_BYTES).min(buf.len())].to_vec();
            let what = match kind {
                RecordKind::HttpRequest => HttpWhat::Request(bytes()),
                RecordKind::HttpRequestSent => HttpWhat::RequestSent(bytes()),
                RecordKind::HttpResponseRead => HttpWhat::ResponseRead,
                _ => HttpWhat::Response,
            };
            return Ok(Record::Http {
                pid,
                tid,
                goid,
                what,
                time_ns,
            });
        }
        Some(k @ (RecordKind::MapsChanged | RecordKind::Exec)) => {
            let need = size_of::<probe_common::native::MapsChanged>();
            if len < need {
                return Err(DecodeError::Short { len, need });
            }
            buf.advance(4);
            let pid = buf.get_u32_le();
            return Ok(if k == RecordKind::Exec {
                Record::Exec { pid }
            } else {
                Record::MapsChanged { pid }
            });
        }
        None => return Err(DecodeError::UnknownKind(kind)),
    }
    if len < HEADER {
        return Err(DecodeError::Short { len, need: HEADER });
    }
    // SAFETY: `buf` holds at least a header's bytes (checked above), and a
    // `SampleHeader` is integers and byte arrays only, with no padding that
    // is not a field (probe-common checks): any bytes are one.
    let h: SampleHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    buf.advance(HEADER);
    let (kernel_frames, user_frames) = (
        usize::from(h.stacks.kernel_frames),
        usize::from(h.stacks.user_frames),
    );
    let switch_frames = h.go.switch_frames as usize;
    let flags = h.stacks.flags;
    let off_cpu = (kind == RecordKind::OffCpuSample as u32).then_some(OffCpu {
        ns: h.span.ns,
        state: h.span.state,
        syscall: h.span.syscall,
    });
    let go_block = (kind == RecordKind::GoBlockSample as u32).then_some(GoBlock {
        ns: h.span.ns,
        reason: h.go.status,
    });
    let fp_baseline =
        (flags & FLAG_FP_BASELINE != 0).then_some((h.baseline.outermost, h.baseline.frames));
    if kernel_frames > MAX_FRAMES
        || user_frames > MAX_FRAMES
        || switch_frames > MAX_SWITCH_FRAMES + 2
    {
        return Err(DecodeError::TooManyFrames(
            kernel_frames.max(user_frames).max(switch_frames),
        ));
    }
    let need = HEADER + 8 * (kernel_frames + user_frames + switch_frames);
    if len < need {
        return Err(DecodeError::Short { len, need });
    }
    let mut frames = |n: usize| (0..n).map(|_| buf.get_u64_ne()).collect::<Vec<_>>();
    let kernel = frames(kernel_frames);
    let user = frames(user_frames);
    let go_switch = frames(switch_frames);
    Ok(Record::CpuSample(Sample {
        pid: h.id.pid,
        tid: h.id.tid,
        cpu: h.id.cpu,
        time_ns: h.id.time_ns,
        comm: h.id.comm,
        flags,
        stack_top: h.stacks.stack_top,
        goid: h.go.goid,
        go_labels: h.go.labels,
        go_status: h.go.status,
        go_switch,
        go_signal_pc: h.go.signal_pc,
        fp_baseline,
        off_cpu,
        go_block,
        kernel,
        user,
    }))
}

/// A [`GoroutineEnd`] record.
fn decode_goroutine_end(mut buf: &[u8]) -> Result<Record, DecodeError> {
    let need = size_of::<GoroutineEnd>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            len: buf.len(),
            need,
        });
    }
    buf.advance(4);
    let pid = buf.get_u32_le();
    let end_ns = buf.get_u64_le();
    let mut g = Goroutine {
        goid: buf.get_u64_le(),
        creation: Creation {
            parent_goid: buf.get_u64_le(),
            create_pc: buf.get_u64_le(),
            start_pc: buf.get_u64_le(),
        },
        since_ns: buf.get_u64_le(),
        status: buf.get_u32_le(),
        wait_reason: buf.get_u32_le(),
        first_ns: buf.get_u64_le(),
        first_status: buf.get_u32_le(),
        first_reason: buf.get_u32_le(),
        ns: [0; slot::COUNT],
        wait_reasons: [0; WAIT_SLOTS],
        _pad: [0; 2],
        wait_ns: [0; WAIT_SLOTS],
        wait_other_ns: 0,
        changes: 0,
    };
    for n in &mut g.ns {
        *n = buf.get_u64_le();
    }
    buf.copy_to_slice(&mut g.wait_reasons);
    buf.advance(2);
    for n in &mut g.wait_ns {
        *n = buf.get_u64_le();
    }
    g.wait_other_ns = buf.get_u64_le();
    g.changes = buf.get_u64_le();
    Ok(Record::GoroutineEnd { pid, end_ns, g })
}

#[cfg(test)]
pub(crate) mod tests {
    use probe_common::{
        go::GoSample,
        native::{FpBaseline, SampleId, Stacks, record_len},
        offcpu::Span,
    };

    use super::*;

    /// A header as the kernel program fills one, every field set (the
    /// frame counts and flags given).
    pub(crate) fn header(
        kind: u32,
        pid: u32,
        kernel: usize,
        user: usize,
        flags: u32,
    ) -> SampleHeader {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"chain");
        SampleHeader {
            id: SampleId {
                kind,
                pid,
                tid: pid + 1,
                cpu: 3,
                time_ns: 123_456_789,
                comm,
            },
            stacks: Stacks {
                kernel_frames: kernel as u16,
                user_frames: user as u16,
                flags,
                stack_top: [0x7ff0_0000_1000, 2, 3, 4],
            },
            go: GoSample {
                goid: 17,
                labels: 0xc000_0100,
                status: 3,
                switch_frames: 0,
                signal_pc: 0x45_1000,
            },
            baseline: FpBaseline {
                outermost: 0x40_1000,
                frames: 9,
                _pad: 0,
            },
            // 231: nanosleep + 1.
            span: Span {
                ns: 2_000_000_000,
                state: 1,
                syscall: 231,
                _pad: 0,
            },
        }
    }

    /// A record as the kernel program sends it: the bytes of a header
    /// value (see [`header`]), then its frames.
    pub(crate) fn encode(kind: u32, pid: u32, kernel: &[u64], user: &[u64], flags: u32) -> Vec<u8> {
        let mut v = bytes_of(&header(kind, pid, kernel.len(), user.len(), flags));
        for ip in kernel.iter().chain(user) {
            v.extend_from_slice(&ip.to_ne_bytes());
        }
        v
    }

    /// The bytes of `h`, as the kernel sends them.
    fn bytes_of(h: &SampleHeader) -> Vec<u8> {
        // SAFETY: a SampleHeader has no padding that is not a field
        // (probe-common checks), so all its bytes are initialized.
        unsafe {
            std::slice::from_raw_parts(
                (h as *const SampleHeader).cast::<u8>(),
                size_of::<SampleHeader>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_sample_with_both_stacks() {
        let bytes = encode(
            1,
            42,
            &[0xffff_ffff_8100_0000, 0xffff_ffff_8200_0000],
            &[0x401000],
            4,
        );
        assert_eq!(bytes.len(), record_len(3));
        let Ok(Record::CpuSample(s)) = decode(&bytes) else {
            panic!("not a sample")
        };
        assert_eq!((s.pid, s.tid, s.cpu, s.time_ns), (42, 43, 3, 123_456_789));
        assert_eq!(s.comm_str(), "chain");
        assert_eq!(s.kernel, vec![0xffff_ffff_8100_0000, 0xffff_ffff_8200_0000]);
        assert_eq!(s.user, vec![0x401000]);
        assert_eq!(s.flags, 4);
        assert_eq!(s.stack_top, [0x7ff0_0000_1000, 2, 3, 4]);
        assert_eq!((s.goid, s.go_labels, s.go_status), (17, 0xc000_0100, 3));
        assert_eq!((s.go_switch.len(), s.go_signal_pc), (0, 0x45_1000));
        assert_eq!(s.fp_baseline, None, "flag not set");
        let mut bytes = encode(1, 42, &[], &[0x401000], FLAG_FP_BASELINE);
        bytes.truncate(record_len(1));
        let Ok(Record::CpuSample(s)) = decode(&bytes) else {
            panic!("not a sample")
        };
        assert_eq!(s.fp_baseline, Some((0x40_1000, 9)));
        assert_eq!(s.off_cpu, None, "an on-CPU sample");
    }

    #[test]
    fn decodes_the_end_of_an_off_cpu_span() {
        let bytes = encode(RecordKind::OffCpuSample as u32, 42, &[], &[0x401000], 0);
        let Ok(Record::CpuSample(s)) = decode(&bytes) else {
            panic!("not a sample")
        };
        assert_eq!(
            s.off_cpu,
            Some(OffCpu {
                ns: 2_000_000_000,
                state: 1,
                syscall: 231
            })
        );
        assert_eq!(s.user, vec![0x401000]);
    }

    #[test]
    fn every_header_field_is_read_where_the_kernel_writes_it() {
        // Each field of a real header value set to a value of its own, sent
        // as the kernel sends it: each comes back in its place.
        let mut h = header(RecordKind::OffCpuSample as u32, 7, 0, 1, FLAG_FP_BASELINE);
        h.go.switch_frames = 1;
        h.baseline.frames = 11;
        let bytes = [
            &bytes_of(&h)[..],
            &0x40_2000u64.to_ne_bytes(),
            &0x40_3000u64.to_ne_bytes(),
        ]
        .concat();
        let Ok(Record::CpuSample(s)) = decode(&bytes) else {
            panic!("not a sample")
        };
        assert_eq!((s.pid, s.tid, s.cpu, s.time_ns), (7, 8, 3, 123_456_789));
        assert_eq!(
            (s.user.clone(), s.go_switch.clone()),
            (vec![0x40_2000], vec![0x40_3000])
        );
        assert_eq!(
            (s.goid, s.go_labels, s.go_status, s.go_signal_pc),
            (17, 0xc000_0100, 3, 0x45_1000)
        );
        assert_eq!(s.fp_baseline, Some((0x40_1000, 11)));
        assert_eq!(
            s.off_cpu,
            Some(OffCpu {
                ns: 2_000_000_000,
                state: 1,
                syscall: 231
            })
        );
        assert_eq!(s.stack_top, [0x7ff0_0000_1000, 2, 3, 4]);
    }

    #[test]
    fn rejects_truncated_records() {
        let bytes = encode(1, 42, &[1, 2], &[3, 4], 0);
        for cut in [0, 3, 20, 47, bytes.len() - 1] {
            assert!(
                matches!(decode(&bytes[..cut]), Err(DecodeError::Short { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rejects_unknown_kinds_and_impossible_counts() {
        assert_eq!(
            decode(&encode(99, 1, &[], &[], 0)),
            Err(DecodeError::UnknownKind(99))
        );
        let mut bytes = encode(1, 1, &[], &[], 0);
        let at = std::mem::offset_of!(SampleHeader, stacks.kernel_frames);
        bytes[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::TooManyFrames(500)));
    }

    #[test]
    fn decodes_a_goroutine_end_laid_out_as_the_kernel_does() {
        let g = Goroutine {
            goid: 18,
            creation: Creation {
                parent_goid: 1,
                create_pc: 0x4a_0000,
                start_pc: 0x4b_0000,
            },
            since_ns: 10,
            status: 6,
            wait_reason: 0,
            first_ns: 5,
            first_status: 4,
            first_reason: 19,
            ns: [1, 2, 3, 4, 5],
            wait_reasons: [19, 14, 0xff, 0xff, 0xff, 0xff],
            _pad: [0; 2],
            wait_ns: [100, 200, 0, 0, 0, 0],
            wait_other_ns: 7,
            changes: 9,
        };
        let end = GoroutineEnd {
            kind: RecordKind::GoroutineEnd as u32,
            pid: 42,
            end_ns: 99,
            g,
        };
        // SAFETY: GoroutineEnd is repr(C) plain old data without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &end as *const GoroutineEnd as *const u8,
                size_of::<GoroutineEnd>(),
            )
        };
        assert_eq!(
            decode(bytes),
            Ok(Record::GoroutineEnd {
                pid: 42,
                end_ns: 99,
                g
            })
        );
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }
}
