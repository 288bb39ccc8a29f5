//! The kernel crossprof runs on: which features each mode needs and whether
//! this kernel has them ([`features`]), what the verifier said when it refused
//! a program ([`verifier`]), and what crossprof's programs ask of any verifier
//! ([`stack`]).
//!
//! Before anything is loaded, [`Kernel::probe`] asks the kernel what it has and
//! [`Kernel::plan`] decides, for what a run [`Needs`], how it runs: every walk,
//! frame pointers only (a kernel without `bpf_loop` or BTF, such as Ubuntu
//! 22.04's 5.15: said in a note and in summary.json), or not at all, with one
//! line naming the kernel, the missing feature, the kernel that has it, and the
//! modes that would work here.
//!
//! | mode | needs | since |
//! |---|---|---|
//! | cpu (every walk) | ring buffer, BTF, mmapable arrays, `bpf_loop`, `bpf_get_current_task_btf`, `bpf_task_pt_regs` | 5.17 |
//! | cpu (frame pointers only) | ring buffer | 5.8 |
//! | offcpu, wall | the above, `tp_btf`, `sched_switch`'s `prev_state` | 5.18 |
//! | goblock, `--go-states` (and wall in Go processes) | uprobes, `bpf_get_attach_cookie`, `bpf_loop` | 5.17 |
//! | `--group-by trace` | BTF, `tp_btf` | 5.8 |

pub mod error;
pub mod features;
pub mod stack;
pub mod verifier;

use std::{collections::BTreeMap, fmt, path::Path};

pub use features::Feature;

/// A kernel version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch level (Debian's ABI number for 6.1.0-47 is not one).
    pub patch: u32,
}

impl Version {
    /// The version at the start of a release string: `6.1.0-47-amd64`,
    /// `6.12.111+deb12-amd64`, `5.15.0-91-generic`, `6.18.0`.
    pub fn parse(release: &str) -> Option<Version> {
        let head = release
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?;
        let mut parts = head.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = parts.next().and_then(Result::ok).unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::from("unknown");
    }
    // SAFETY: uname NUL-terminates its fields.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// What a run asks of the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// On-CPU samples (cpu, wall).
    pub on_cpu: bool,
    /// Off-CPU spans (offcpu, wall).
    pub off_cpu: bool,
    /// The goroutine-state uprobes (goblock, `--go-states`, wall and trace
    /// in Go processes).
    pub go_probes: bool,
    /// Request attribution (`--group-by trace`).
    pub http: bool,
}

/// How user stacks are walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// `.eh_frame` rules, .NET and Go walks, frame pointers where nothing else.
    Full,
    /// Frame pointers only (`bpf_get_stack`), as perf does: a kernel without
    /// what the other walks need.
    FramePointers,
}

/// How a run goes on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The walk.
    pub walk: Walk,
    /// What the kernel lacks that a full walk needs (empty for [`Walk::Full`]).
    pub missing: Vec<Feature>,
}

impl Plan {
    /// The note a degraded run prints and keeps in summary.json.
    pub fn note(&self, release: &str) -> Option<String> {
        (self.walk == Walk::FramePointers).then(|| {
            format!(
                "this kernel ({release}) lacks {}: user stacks are walked by frame pointers only, \
                 as perf does (code without frame pointers loses its callers; no .NET frameless \
                 methods, no goroutines); Linux {} or newer walks them all",
                names(&self.missing),
                newest_since(&self.missing)
            )
        })
    }
}

/// The features every walk needs.
const FULL_WALK: [Feature; 6] = [
    Feature::RingBuffer,
    Feature::Btf,
    Feature::MmapableArray,
    Feature::BpfLoop,
    Feature::CurrentTaskBtf,
    Feature::TaskPtRegs,
];
/// What the frame-pointer walk needs.
const FP_WALK: [Feature; 1] = [Feature::RingBuffer];
/// Off-CPU spans: built at the switch with the full walk.
const OFF_CPU: [Feature; 8] = [
    Feature::RingBuffer,
    Feature::Btf,
    Feature::TpBtf,
    Feature::SchedSwitchPrevState,
    Feature::MmapableArray,
    Feature::BpfLoop,
    Feature::CurrentTaskBtf,
    Feature::TaskPtRegs,
];
/// The goroutine-state uprobes.
const GO_PROBES: [Feature; 4] = [
    Feature::RingBuffer,
    Feature::Uprobes,
    Feature::AttachCookie,
    Feature::BpfLoop,
];
/// Request attribution.
const HTTP: [Feature; 3] = [Feature::RingBuffer, Feature::Btf, Feature::TpBtf];

/// What the running kernel has.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// Its version, if the release string starts with one.
    pub version: Option<Version>,
    /// Features a probe answered for.
    pub probed: BTreeMap<Feature, bool>,
}

/// The environment variable that makes crossprof believe the kernel lacks
/// features (comma-separated [`Feature::key`]s): how the degraded paths are
/// tested on a kernel that has everything.
pub const ASSUME_MISSING_ENV: &str = "CROSSPROF_ASSUME_MISSING";

impl Kernel {
    /// Asks the running kernel (BTF looked for at `btf`).
    pub fn probe(btf: &Path) -> Kernel {
        let release = release();
        let assumed = std::env::var(ASSUME_MISSING_ENV).unwrap_or_default();
        let probed = Feature::ALL
            .iter()
            .filter_map(|&f| {
                if assumed.split(',').any(|k| k.trim() == f.key()) {
                    return Some((f, false));
                }
                features::probe(f, btf).map(|has| (f, has))
            })
            .collect();
        Kernel {
            version: Version::parse(&release),
            release,
            probed,
        }
    }

    /// Does it have `f`? A probe's answer, else its version's; a kernel
    /// whose version cannot be read is given the benefit of the doubt (the
    /// load will tell).
    pub fn has(&self, f: Feature) -> bool {
        if let Some(&has) = self.probed.get(&f) {
            return has;
        }
        self.version.is_none_or(|v| v >= f.since())
    }

    fn first_missing(&self, needed: &[Feature]) -> Option<Feature> {
        needed.iter().copied().find(|&f| !self.has(f))
    }

    /// How a run that `needs` this goes here, or why it cannot (`what` names
    /// the run in the message: `--mode offcpu`, `--go-states`).
    pub fn plan(&self, needs: Needs, what: &str) -> Result<Plan, Refusal> {
        let refuse = |feature: Feature| Refusal {
            release: self.release.clone(),
            what: what.to_owned(),
            feature,
            works: self.modes_that_work(),
        };
        for (asked, needed) in [
            (needs.off_cpu, &OFF_CPU[..]),
            (needs.go_probes, &GO_PROBES[..]),
            (needs.http, &HTTP[..]),
        ] {
            if asked && let Some(f) = self.first_missing(needed) {
                return Err(refuse(f));
            }
        }
        let missing: Vec<Feature> = FULL_WALK
            .iter()
            .copied()
            .filter(|&f| !self.has(f))
            .collect();
        if missing.is_empty() || !needs.on_cpu {
            return Ok(Plan {
                walk: Walk::Full,
                missing: Vec::new(),
            });
        }
        if let Some(f) = self.first_missing(&FP_WALK) {
            return Err(refuse(f));
        }
        Ok(Plan {
            walk: Walk::FramePointers,
            missing,
        })
    }

    /// The modes that run here, as a user names them.
    pub fn modes_that_work(&self) -> Vec<String> {
        let on_cpu = Needs {
            on_cpu: true,
            ..Needs::default()
        };
        let modes = [
            ("cpu", on_cpu),
            (
                "offcpu",
                Needs {
                    off_cpu: true,
                    ..Needs::default()
                },
            ),
            (
                "wall",
                Needs {
                    off_cpu: true,
                    go_probes: true,
                    ..on_cpu
                },
            ),
            (
                "goblock",
                Needs {
                    go_probes: true,
                    ..Needs::default()
                },
            ),
            (
                "--go-states",
                Needs {
                    go_probes: true,
                    ..on_cpu
                },
            ),
            (
                "--group-by trace",
                Needs {
                    http: true,
                    ..on_cpu
                },
            ),
        ];
        let mut works = Vec::new();
        for (name, needs) in modes {
            // A plan's refusal lists what works: not asked here (no recursion).
            let refused = [
                (needs.off_cpu, &OFF_CPU[..]),
                (needs.go_probes, &GO_PROBES[..]),
                (needs.http, &HTTP[..]),
            ]
            .iter()
            .any(|(asked, needed)| *asked && self.first_missing(needed).is_some());
            if refused {
                continue;
            }
            if needs.on_cpu && self.first_missing(&FULL_WALK).is_some() {
                if self.first_missing(&FP_WALK).is_none() {
                    works.push(format!("{name} (frame pointers only)"));
                }
                continue;
            }
            works.push(name.to_owned());
        }
        works
    }
}

/// A run this kernel cannot do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `uname -r`.
    pub release: String,
    /// The run, as the user asked for it.
    pub what: String,
    /// The first feature it lacks.
    pub feature: Feature,
    /// The modes that run here.
    pub works: Vec<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs {}, which Linux has from {}; this kernel is {}",
            self.what,
            self.feature.name(),
            self.feature.since(),
            self.release
        )?;
        if self.works.is_empty() {
            write!(f, ": nothing crossprof does runs here")
        } else {
            write!(f, ": what runs here: {}", self.works.join(", "))
        }
    }
}

/// `a, b and c` of the features' names, each with the kernel that has it.
fn names(features: &[Feature]) -> String {
    let all: Vec<String> = features
        .iter()
        .map(|f| format!("{} (Linux {})", f.name(), f.since()))
        .collect();
    match all.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The newest of the kernels that brought `features`.
fn newest_since(features: &[Feature]) -> Version {
    features.iter().map(|f| f.since()).max().unwrap_or(Version {
        major: 0,
        minor: 0,
        patch: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel of `release` whose probes answered `have` for every probed
    /// feature older than or as old as it (a stock mainline kernel).
    fn stock(release: &str) -> Kernel {
        let version = Version::parse(release);
        let probed = Feature::ALL
            .iter()
            .filter(|f| !matches!(f, Feature::TpBtf | Feature::SchedSwitchPrevState))
            .map(|&f| (f, version.is_some_and(|v| v >= f.since())))
            .collect();
        Kernel {
            release: release.to_owned(),
            version,
            probed,
        }
    }

    fn needs(on_cpu: bool, off_cpu: bool, go_probes: bool, http: bool) -> Needs {
        Needs {
            on_cpu,
            off_cpu,
            go_probes,
            http,
        }
    }

    #[test]
    fn versions_are_read_from_distribution_release_strings() {
        let v = |s| Version::parse(s).map(|v| (v.major, v.minor, v.patch));
        assert_eq!(v("6.1.0-47-amd64"), Some((6, 1, 0)));
        assert_eq!(v("6.12.111+deb12-amd64"), Some((6, 12, 111)));
        assert_eq!(v("5.15.0-91-generic"), Some((5, 15, 0)));
        assert_eq!(v("6.18.0"), Some((6, 18, 0)));
        assert_eq!(v("6.8"), Some((6, 8, 0)));
        assert_eq!(v("unknown"), None);
    }

    #[test]
    fn every_mode_runs_fully_on_debian_12_kernels_and_this_one() {
        for release in ["6.1.0-47-amd64", "6.12.111+deb12-amd64", "6.18.0"] {
            let k = stock(release);
            for n in [
                needs(true, false, false, false),
                needs(false, true, false, false),
                needs(true, true, true, false),
                needs(false, false, true, false),
                needs(true, false, false, true),
            ] {
                let plan = k.plan(n, "x").unwrap();
                assert_eq!(plan.walk, Walk::Full, "{release} {n:?}");
                assert!(plan.note(release).is_none());
            }
            assert_eq!(
                k.modes_that_work(),
                [
                    "cpu",
                    "offcpu",
                    "wall",
                    "goblock",
                    "--go-states",
                    "--group-by trace"
                ]
            );
        }
    }

    #[test]
    fn ubuntu_22_04_samples_by_frame_pointers_and_names_what_it_lacks() {
        let k = stock("5.15.0-91-generic");
        let plan = k
            .plan(needs(true, false, false, false), "--mode cpu")
            .unwrap();
        assert_eq!(plan.walk, Walk::FramePointers);
        assert_eq!(plan.missing, vec![Feature::BpfLoop]);
        let note = plan.note(&k.release).unwrap();
        assert!(note.contains("the bpf_loop helper (Linux 5.17)"), "{note}");
        assert!(note.contains("frame pointers only"), "{note}");
        // Off-CPU spans need sched_switch's prev_state (5.18): refused, with
        // what works instead.
        let refusal = k
            .plan(needs(false, true, false, false), "--mode offcpu")
            .unwrap_err();
        assert_eq!(refusal.feature, Feature::SchedSwitchPrevState);
        assert_eq!(
            refusal.to_string(),
            "--mode offcpu needs sched_switch's prev_state argument, which Linux has from 5.18; \
             this kernel is 5.15.0-91-generic: what runs here: cpu (frame pointers only), \
             --group-by trace (frame pointers only)"
        );
        // The goroutine probes walk the parked goroutine's frames with bpf_loop.
        let refusal = k
            .plan(needs(false, false, true, false), "--mode goblock")
            .unwrap_err();
        assert_eq!(refusal.feature, Feature::BpfLoop);
    }

    #[test]
    fn a_kernel_without_btf_samples_by_frame_pointers_and_refuses_off_cpu() {
        let mut k = stock("6.18.0");
        k.probed.insert(Feature::Btf, false);
        let plan = k
            .plan(needs(true, false, false, false), "--mode cpu")
            .unwrap();
        assert_eq!(plan.walk, Walk::FramePointers);
        assert_eq!(plan.missing, vec![Feature::Btf]);
        let refusal = k
            .plan(needs(true, true, false, false), "--mode wall")
            .unwrap_err();
        assert_eq!(refusal.feature, Feature::Btf);
        assert!(refusal.works.contains(&"goblock".to_owned()), "{refusal}");
    }

    #[test]
    fn a_kernel_without_a_ring_buffer_runs_nothing() {
        let k = stock("5.4.0-150-generic");
        let refusal = k
            .plan(needs(true, false, false, false), "--mode cpu")
            .unwrap_err();
        assert_eq!(refusal.feature, Feature::RingBuffer);
        assert!(
            refusal
                .to_string()
                .ends_with("nothing crossprof does runs here"),
            "{refusal}"
        );
    }

    #[test]
    fn a_probe_outranks_the_version() {
        // A distribution kernel older than 5.17 with bpf_loop backported.
        let mut k = stock("5.14.0-362.el9.x86_64");
        k.probed.insert(Feature::BpfLoop, true);
        k.probed.insert(Feature::TaskPtRegs, true);
        k.probed.insert(Feature::AttachCookie, true);
        let plan = k
            .plan(needs(true, false, true, false), "--go-states")
            .unwrap();
        assert_eq!(plan.walk, Walk::Full);
    }
}
