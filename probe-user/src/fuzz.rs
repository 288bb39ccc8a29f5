//! Fuzzing every parser of bytes crossprof does not control: what a target
//! writes (perf map, jitdump, diagnostics IPC replies, NetTrace streams), the
//! files it maps (ELF, `.eh_frame`, `.debug_frame`, `.gopclntab`, Go build
//! info, ReadyToRun images and their ECMA-335 metadata, portable PDBs, .NET
//! prologs), what the kernel sends (ring-buffer records, `/proc/PID/maps`),
//! what a user hands `diff` (pprof, gzip, folded) and what a client sends the
//! agent (HTTP request heads, `traceparent`), the agent's outbox files, the kernel symbol cache, a process's environment, cgroup
//! path and status, and the command line's parsers.
//!
//! Each target is a function of one byte string that must return, never
//! panic, and never take long. The driver is a mutation fuzzer (no coverage
//! feedback, so it runs on the stable toolchain and in CI): each round takes a
//! seed (real files read here: `/bin/true`, a Go fixture, the .NET runtime's
//! own ReadyToRun assemblies, and inputs built by the parsers' unit tests),
//! applies 1-8 random edits (bit flips, boundary integers written over
//! lengths and offsets, cut, duplicated or spliced ranges), most of them in
//! the part of the seed the parser reads (a section of an ELF file), and runs
//! the target under `catch_unwind`. A panic or a round over 2 s saves the
//! input to `target/fuzz/crashes/` and fails, naming the file; a crash fixed
//! gets its input checked in under `tests/data/fuzz/<target>/`, which
//! `tests::inputs_that_once_crashed_stay_fixed` replays on every run.
//!
//! `cargo test -p probe-user --lib fuzz` runs every target for a short time
//! with a fixed seed; `cargo xtask fuzz [--secs N]` runs each for N seconds
//! (CI: 5) from a seed of the clock, which it prints.

#[cfg(test)]
use std::{
    ops::Range,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// One fuzz target.
pub struct Target {
    /// What `cargo xtask fuzz TARGET` and the harness in `fuzz/` call it.
    pub name: &'static str,
    /// Its seeds (built once per run).
    #[cfg(test)]
    pub seeds: fn() -> Vec<Seed>,
    /// The code under test.
    pub run: fn(&[u8]),
}

#[cfg(test)]
/// A starting input, and the bytes of it the parser reads most (mutations go
/// there 7 times in 8).
#[derive(Clone)]
pub struct Seed {
    /// The input.
    pub bytes: Vec<u8>,
    /// Where in it mutations go most.
    pub focus: Range<usize>,
}

#[cfg(test)]
impl Seed {
    fn whole(bytes: Vec<u8>) -> Self {
        let focus = 0..bytes.len();
        Self { bytes, focus }
    }
}

#[cfg(test)]
/// xorshift64*: enough randomness for mutations, reproducible from a seed.
struct Rng(u64);

#[cfg(test)]
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

#[cfg(test)]
/// Values that break length and offset arithmetic.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

#[cfg(test)]
/// The longest a mutated input grows to: twice its seed, at least 64 KiB.
fn size_limit(seed: &Seed) -> usize {
    (seed.bytes.len() * 2).max(64 << 10)
}

#[cfg(test)]
/// Applies 1-8 random edits to `input` (a copy of `seed`).
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seed: &Seed, others: &[Seed]) {
    for _ in 0..1 + rng.below(8) {
        let pos = |rng: &mut Rng, len: usize| -> usize {
            let focus = seed.focus.start.min(len)..seed.focus.end.min(len);
            if rng.below(8) != 0 && !focus.is_empty() {
                focus.start + rng.below(focus.len())
            } else {
                rng.below(len.max(1))
            }
        };
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = pos(rng, len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = pos(rng, len);
                input[at] = INTERESTING[rng.below(INTERESTING.len())] as u8;
            }
            2 | 3 => {
                // An integer over a length or an offset, either width.
                let width = [2usize, 4, 8][rng.below(3)];
                if len >= width {
                    let at = pos(rng, len).min(len - width);
                    let v = match rng.below(3) {
                        0 => INTERESTING[rng.below(INTERESTING.len())],
                        1 => (len as u64)
                            .wrapping_add(rng.below(16) as u64)
                            .wrapping_sub(8),
                        _ => rng.next(),
                    };
                    input[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            4 if len > 0 => {
                let at = pos(rng, len);
                let n = (1 + rng.below(64)).min(len - at);
                input.drain(at..at + n);
            }
            5 if len > 0 => {
                // A range copied over another (a length duplicated, a record
                // repeated).
                let (from, to) = (pos(rng, len), pos(rng, len));
                let n = (1 + rng.below(32)).min(len - from).min(len - to);
                input.copy_within(from..from + n, to);
            }
            6 => {
                let at = pos(rng, len);
                let n = 1 + rng.below(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            7 if len > 0 => input.truncate(pos(rng, len)),
            8 if !others.is_empty() => {
                // The tail of another seed spliced in.
                let other = &others[rng.below(others.len())].bytes;
                if !other.is_empty() {
                    let (at, from) = (pos(rng, len), rng.below(other.len()));
                    input.truncate(at);
                    input.extend_from_slice(&other[from..other.len().min(from + 4096)]);
                }
            }
            _ => {}
        }
    }
    input.truncate(size_limit(seed));
}

#[cfg(test)]
/// What one target's run found.
#[derive(Debug)]
pub struct Ran {
    /// Inputs tried.
    pub rounds: u64,
}

#[cfg(test)]
/// Runs `target` for `time` from `seed_value`; on a panic or a slow round,
/// saves the input under `crashes` and returns why, with the file.
pub fn run(
    target: &Target,
    time: Duration,
    seed_value: u64,
    crashes: &Path,
) -> Result<Ran, String> {
    let seeds = (target.seeds)();
    assert!(!seeds.is_empty(), "{}: no seed", target.name);
    let mut rng = Rng(seed_value | 1);
    let started = Instant::now();
    let mut rounds = 0u64;
    // The seeds as they are come first.
    let mut queue: Vec<Vec<u8>> = seeds.iter().map(|s| s.bytes.clone()).collect();
    while rounds < queue.len() as u64 || started.elapsed() < time {
        let input = if (rounds as usize) < queue.len() {
            std::mem::take(&mut queue[rounds as usize])
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            let mut input = seed.bytes.clone();
            mutate(&mut rng, &mut input, seed, &seeds);
            input
        };
        rounds += 1;
        let began = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let took = began.elapsed();
        let why = match outcome {
            Err(payload) => Some(format!(
                "panicked: {}",
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default()
            )),
            Ok(()) if took > Duration::from_secs(2) => Some(format!("took {took:?}")),
            Ok(()) => None,
        };
        if let Some(why) = why {
            let _ = std::fs::create_dir_all(crashes);
            let file = crashes.join(format!("{}-{:016x}.bin", target.name, fnv(&input)));
            let _ = std::fs::write(&file, &input);
            return Err(format!(
                "{}: {why} on round {rounds} (seed {seed_value}); input saved in {}",
                target.name,
                file.display()
            ));
        }
    }
    Ok(Ran { rounds })
}

#[cfg(test)]
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
/// The part of an ELF file that is section `name` (all of it if none).
fn section_focus(bytes: &[u8], name: &str) -> Range<usize> {
    crate::native::elf::Elf::parse(bytes)
        .and_then(|e| e.section(name))
        .map(|s| s.offset as usize..(s.offset + s.size) as usize)
        .filter(|r| r.end <= bytes.len())
        .unwrap_or(0..bytes.len())
}

#[cfg(test)]
fn elf_section(bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    let r = section_focus(bytes, name);
    (r.len() < bytes.len()).then(|| bytes[r].to_vec())
}

#[cfg(test)]
fn system_elf() -> Vec<u8> {
    std::fs::read("/bin/true").expect("/bin/true")
}

#[cfg(test)]
fn go_binary() -> Vec<u8> {
    let path = crossprof_tests::Go::Go123.fixture("chain", crossprof_tests::GoBuild::Stripped);
    std::fs::read(path).expect("the Go fixture")
}

/// The Go chain fixture built with its DWARF left uncompressed
/// (`-ldflags=-compressdwarf=false`), so that mutations reach the DWARF
/// reader instead of dying in zlib (built once, into `target/fuzz/seeds/`).
#[cfg(test)]
fn go_binary_raw_dwarf() -> Vec<u8> {
    let go = crossprof_tests::Go::Go123;
    let target = crossprof_tests::target_dir();
    let out = target.join("fuzz/seeds/chain-rawdwarf");
    if !out.is_file() {
        std::fs::create_dir_all(out.parent().expect("a folder")).expect("target/fuzz/seeds");
        let built = std::process::Command::new(go.go())
            .args(["build", "-ldflags=-compressdwarf=false", "-o"])
            .arg(&out)
            .arg(crossprof_tests::workspace_root().join("tests/fixtures/go/chain.go"))
            .env("GOCACHE", target.join("go-cache").join(go.version()))
            .env("GOPATH", target.join("go-path"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-buildvcs=false")
            .env("CGO_ENABLED", "0")
            .status()
            .expect("go build");
        assert!(built.success(), "go build -ldflags=-compressdwarf=false");
    }
    std::fs::read(out).expect("the Go fixture")
}

#[cfg(test)]
/// The .NET 8 runtime's smallest ReadyToRun assemblies that name methods.
fn r2r_assemblies() -> Vec<Vec<u8>> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let dir = PathBuf::from(home)
        .join(".cache/crossprof/dotnet8/dnv/net/runtime/.net/shared/Microsoft.NETCore.App/8.0.4");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
                .filter(|(len, p)| {
                    p.extension().is_some_and(|x| x == "dll") && (16 << 10..256 << 10).contains(len)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .into_iter()
        .filter_map(|(_, p)| std::fs::read(p).ok())
        .filter(|d| crate::dotnet::r2r::R2rImage::parse(d).is_ok_and(|image| !image.is_empty()))
        .take(2)
        .collect()
}

#[cfg(test)]
fn text(lines: &[&str]) -> Vec<Seed> {
    lines
        .iter()
        .map(|l| Seed::whole(l.as_bytes().to_vec()))
        .collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the target `name` on `data` (what a `cargo fuzz` harness calls);
/// false if there is no such target.
pub fn run_named(name: &str, data: &[u8]) -> bool {
    match targets().into_iter().find(|t| t.name == name) {
        Some(t) => {
            (t.run)(data);
            true
        }
        None => false,
    }
}

/// Every target.
pub fn targets() -> Vec<Target> {
    use crate::{dotnet, go, native};
    vec![
        Target {
            name: "perf_map",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "7f00dead1000 40 [OptimizedTier1] Busy::Hot()[Optimized]\n7f00dead2000 1a0 instance void [System.Private.CoreLib] System.String::Concat(string,string)[PreJIT]\n",
                    "7F0000000000 10 stub<1> AllocateTemporaryEntryPoints<PRECODE_FIXUP>\nnot a line\n",
                ])
            },
            run: |b| {
                let mut map = dotnet::perfmap::PerfMap::at(None);
                map.ingest(b);
                let _ = map.lookup(0x7f00_dead_1010);
                let _ = map.take_fresh();
            },
        },
        Target {
            name: "jitdump",
            #[cfg(test)]
            seeds: || {
                let mut d = dotnet::jitdump::tests::header();
                d.extend(dotnet::jitdump::tests::code_load(
                    0x7f00_0000_1000,
                    16,
                    "A::B",
                ));
                d.extend(dotnet::jitdump::tests::code_load(
                    0x7f00_0000_2000,
                    0,
                    "[stub] C",
                ));
                vec![Seed::whole(d)]
            },
            run: |b| {
                let mut dump = dotnet::jitdump::JitDump::at(None);
                let used = dump.parse(b);
                let _ = dump.parse(&b[used.min(b.len())..]);
            },
        },
        Target {
            name: "nettrace",
            #[cfg(test)]
            seeds: || vec![Seed::whole(dotnet::eventpipe::tests::sample_stream())],
            run: |b| {
                let _ = dotnet::eventpipe::read_stream(&mut &b[..], |_| {});
            },
        },
        Target {
            name: "ipc_reply",
            #[cfg(test)]
            seeds: || {
                vec![
                    Seed::whole(dotnet::ipc::encode(0xFF, 0x00, &0u32.to_le_bytes())),
                    Seed::whole(dotnet::ipc::encode(
                        0xFF,
                        0xFF,
                        &0x8013_1384u32.to_le_bytes(),
                    )),
                ]
            },
            run: |b| {
                let _ = dotnet::ipc::decode_reply(b);
            },
        },
        Target {
            name: "elf",
            #[cfg(test)]
            seeds: || {
                let d = system_elf();
                let focus = 0..d.len().min(4096);
                vec![Seed { bytes: d, focus }]
            },
            run: |b| {
                let _ = native::elf::entry_file_offset(b);
                if let Some(elf) = native::elf::Elf::parse(b) {
                    for name in [".text", ".eh_frame", ".note.gnu.build-id", ".gopclntab"] {
                        let _ = elf.section_data(b, name);
                    }
                    let _ = elf.file_offset(0x1000);
                    let _ = elf.pointer(b, 0x4000);
                }
                // What a command asks of the loader (its .interp, .dynamic).
                let _ = native::loader::needs(b);
            },
        },
        Target {
            name: "elf_notes",
            #[cfg(test)]
            seeds: || {
                let d = system_elf();
                vec![Seed::whole(
                    elf_section(&d, ".note.gnu.build-id").expect("/bin/true has a build id"),
                )]
            },
            run: |b| {
                let _ = native::elf::notes_build_id(b);
            },
        },
        Target {
            name: "xz",
            #[cfg(test)]
            seeds: || {
                let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 13) as u8).collect();
                let mut xz = Vec::new();
                lzma_rs::xz_compress(&mut std::io::BufReader::new(&data[..]), &mut xz)
                    .expect("compress");
                vec![Seed::whole(xz)]
            },
            run: |b| {
                // A binary's `.gnu_debugdata` (MiniDebugInfo) is its owner's bytes.
                let _ = native::symbols::decompress_xz(b, 1 << 20);
            },
        },
        Target {
            name: "eh_frame",
            #[cfg(test)]
            seeds: || {
                let d = system_elf();
                vec![
                    Seed::whole(elf_section(&d, ".eh_frame").expect("/bin/true has .eh_frame")),
                    Seed::whole(native::ehframe::tests::framed()),
                ]
            },
            run: |b| {
                let _ = native::ehframe::rows(b, 0x1000);
                let _ = native::ehframe::debug_frame_rows(b);
                let _ = native::ehframe::functions(b, 0x1000);
            },
        },
        Target {
            name: "gopclntab",
            #[cfg(test)]
            seeds: || {
                let d = go_binary();
                let focus = section_focus(&d, ".gopclntab");
                vec![Seed { bytes: d, focus }]
            },
            run: |b| {
                if let Ok(Some(table)) = go::pclntab::GoTable::parse(b.to_vec()) {
                    let _ = table.function("main.main");
                    let _ = go::layout(&table);
                }
            },
        },
        Target {
            name: "go_dwarf",
            #[cfg(test)]
            seeds: || {
                let d = go_binary_raw_dwarf();
                let focus = section_focus(&d, ".debug_info");
                assert!(focus.len() < d.len(), "no plain .debug_info");
                vec![Seed { bytes: d, focus }]
            },
            run: |b| {
                if let Some(elf) = native::elf::Elf::parse(b) {
                    let _ = go::dwarf::layout(b, &elf);
                }
            },
        },
        Target {
            name: "go_buildinfo",
            #[cfg(test)]
            seeds: || {
                let d = go_binary();
                vec![Seed::whole(
                    elf_section(&d, ".go.buildinfo").expect("a Go binary has build info"),
                )]
            },
            run: |b| {
                let _ = go::pclntab::build_info_version(b);
            },
        },
        Target {
            name: "ready_to_run",
            #[cfg(test)]
            seeds: || {
                r2r_assemblies()
                    .into_iter()
                    .map(|d| {
                        let focus = 0..d.len().min(16 << 10);
                        Seed { bytes: d, focus }
                    })
                    .collect()
            },
            run: |b| {
                if let Ok(image) = dotnet::r2r::R2rImage::parse(b) {
                    let _ = dotnet::precompiled_shapes(&image, b);
                }
            },
        },
        Target {
            name: "portable_pdb",
            #[cfg(test)]
            seeds: || {
                vec![
                    Seed::whole(dotnet::pdb::tests::sample(false)),
                    Seed::whole(dotnet::pdb::tests::sample(true)),
                    Seed::whole(dotnet::pdb::tests::sample_pe()),
                ]
            },
            run: |b| {
                if let Ok(pdb) = dotnet::pdb::PortablePdb::parse(b) {
                    let _ = pdb.line(0x0600_0001, 3);
                }
                let _ = dotnet::pdb::codeview(b);
            },
        },
        Target {
            name: "dotnet_prolog",
            #[cfg(test)]
            seeds: || {
                vec![
                    // push rbp; mov rbp,rsp; push r15; sub rsp,0x28; lea rbp,[rsp+0x30]
                    Seed::whole(vec![
                        0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x48, 0x83, 0xec, 0x28, 0x48, 0x8d,
                        0x6c, 0x24, 0x30,
                    ]),
                    Seed::whole(vec![0x56, 0x53, 0x48, 0x81, 0xec, 0x00, 0x01, 0x00, 0x00]),
                ]
            },
            run: |b| {
                let _ = dotnet::unwind::decode_prolog(b);
            },
        },
        Target {
            name: "ring_record",
            #[cfg(test)]
            seeds: || {
                vec![
                    Seed::whole(crate::decode::tests::encode(
                        0,
                        42,
                        &[0xffff_ffff_8100_0000],
                        &[0x40_1000, 0x40_2000],
                        0,
                    )),
                    Seed::whole(crate::decode::tests::encode(0, 7, &[], &[0x40_1000], 1)),
                ]
            },
            run: |b| {
                let _ = crate::decode::decode(b);
            },
        },
        Target {
            name: "capture",
            #[cfg(test)]
            seeds: || {
                // A ring record, and a runtime file's chunk as `record
                // --capture` writes them.
                let mut ring = 3u32.to_le_bytes().to_vec();
                ring.extend([1, 2, 3]);
                let text = b"0x1000 10 void [P] P::A()[QuickJitted]\n";
                let packed = miniz_oxide::deflate::compress_to_vec(text, 6);
                let mut chunk = 7u32.to_le_bytes().to_vec();
                chunk.push(1);
                chunk.extend(2u64.to_le_bytes());
                chunk.extend(0u64.to_le_bytes());
                chunk.extend((text.len() as u32).to_le_bytes());
                chunk.extend((packed.len() as u32).to_le_bytes());
                chunk.extend(packed);
                vec![Seed::whole(ring), Seed::whole(chunk)]
            },
            run: |b| {
                let _ = crate::replay::source::parse_ring(b);
                if let Ok(files) = crate::replay::source::parse_runtime(b) {
                    for chunks in files.values() {
                        let chunks: Vec<_> = chunks.iter().collect();
                        for offset in [0, 1, 4096, u64::MAX - 1] {
                            let _ = crate::replay::source::assemble(&chunks, offset, 1 << 16);
                        }
                    }
                }
            },
        },
        Target {
            name: "proc_maps",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234 /usr/bin/true\n55d0c0a02000-55d0c0a06000 r-xp 00002000 08:01 1234 /usr/bin/true (deleted)\n7ffd1c3f0000-7ffd1c411000 rw-p 00000000 00:00 0 [stack]\n",
                ])
            },
            run: |b| {
                let _ = native::maps::parse_maps(&lossy(b));
            },
        },
        Target {
            name: "pprof",
            #[cfg(test)]
            seeds: || seed_files("pprof"),
            run: |b| {
                let _ = crate::pprof::read(b);
                let _ = crate::pprof::gunzip(b);
            },
        },
        Target {
            name: "folded",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "app;main;work 10\napp;main;idle 3\n",
                    "a;b 18446744073709551615\na;b 1\n",
                ])
            },
            run: |b| {
                let _ = crate::diff::parse_folded(&lossy(b));
            },
        },
        Target {
            name: "http_request",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "GET /debug/pprof/profile?seconds=5&pid=42 HTTP/1.1\r\nHost: 127.0.0.1:7070\r\nAuthorization: Bearer abc\r\nCookie: crossprof_token=abc\r\n\r\n",
                    "GET /flamegraph.svg?window=latest&s=main%2Ehot%zz HTTP/1.1\r\nHost: [::1]:1\r\n\r\n",
                ])
            },
            run: |b| {
                let _ = crate::agent::server::Request::parse(b);
            },
        },
        Target {
            name: "traceparent",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "POST /x HTTP/1.1\r\nHost: a\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nbody",
                ])
            },
            run: |b| {
                let _ = crate::http::traceparent(b);
            },
        },
        Target {
            name: "proc_text",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "PATH=/bin\0TMPDIR=/var/tmp/app\0DOTNET_PerfMapJitDumpPath=/srv/maps\0",
                    "0::/system.slice/docker-c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789.scope",
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789.scope",
                    "Name:\tdotnet\nPid:\t4711\nNSpid:\t4711\t1\n",
                ])
            },
            run: |b| {
                // A process's environment (its own bytes), cgroup path (a
                // delegated subtree's names are its user's) and status.
                for key in ["TMPDIR", "DOTNET_PerfMapJitDumpPath"] {
                    let _ = crate::files::folder_in_root(crate::files::env_value(b, key));
                }
                let s = lossy(b);
                for line in s.lines() {
                    let _ = crate::containers::parse(line.rsplit(':').next().unwrap_or(line));
                }
                let _ = crate::files::parse_own_pid(&s);
            },
        },
        Target {
            name: "kallsyms_cache",
            #[cfg(test)]
            seeds: || vec![Seed::whole(native::kallsyms::tests::cache_file())],
            run: |b| {
                // The per-boot kernel symbol file (`/var/cache/crossprof/kallsyms/`).
                if let Some(c) = native::kallsyms::Cached::decode(b) {
                    let _ = c.table.name(c.core.0);
                }
            },
        },
        Target {
            name: "dotnet_memory",
            #[cfg(test)]
            seeds: || {
                let (memory, table) = dotnet::memory::tests::net8();
                vec![Seed::whole(memory.encode(table, 0x7f00_0000_0080))]
            },
            run: |b| {
                // A .NET runtime's structures read from its memory (code
                // ranges, nibble map, MethodDesc, module path).
                dotnet::memory::fuzz_walk(b);
            },
        },
        Target {
            name: "dotnet_debug_info",
            #[cfg(test)]
            seeds: || {
                let b = dotnet::debuginfo::tests::blob;
                vec![
                    Seed::whole(b(Some(3), &[(0, -2, 0), (0x10, 0, 1), (0x30, 7, 1)])),
                    Seed::whole(b(None, &[(0, 0, 1), (0x8, 2, 1)])),
                ]
            },
            run: |b| {
                // A JIT method's debug info read from a .NET runtime's memory
                // (its bounds: native offsets to IL offsets).
                dotnet::debuginfo::fuzz(b);
            },
        },
        Target {
            name: "dotnet_descriptor",
            #[cfg(test)]
            seeds: || {
                use dotnet::descriptor::tests::{JSON, head};
                let mut b = head(0x7000_0000).to_vec();
                b.extend(JSON.as_bytes());
                vec![Seed::whole(b)]
            },
            run: |b| {
                // A .NET runtime's contract descriptor: its struct and JSON
                // text, read from its memory.
                dotnet::descriptor::fuzz(b);
            },
        },
        Target {
            name: "outbox_request",
            #[cfg(test)]
            seeds: || {
                text(&[
                    "crossprof-request 1\nquery ?name=a%7Bpid%3D1%7D&from=1&until=2\ncontent-type multipart/form-data; boundary=x\nencoding gzip\n\nbody",
                    "crossprof-request 1\nquery \ncontent-type application/x-protobuf\nencoding identity\n\n",
                ])
            },
            run: |b| {
                // A request file of the agent's outbox (`--dir`/outbox-*/).
                let _ = crate::agent::outbox::decode(b);
            },
        },
        Target {
            name: "command_line_values",
            #[cfg(test)]
            seeds: || text(&["2.5", "1h30m", "500ms", "64MiB", "1.5GB", "-0", "1e19s"]),
            run: |b| {
                let s = lossy(b);
                let _ = crate::cli::parse_duration(&s);
                let _ = crate::cli::parse_size(&s);
                let _ = crate::cli::parse_window(&s);
                let _ = crate::kernel::Version::parse(&s);
            },
        },
    ]
}

#[cfg(test)]
/// The checked-in inputs of `tests/data/fuzz/<target>/` (seeds, and inputs
/// that once crashed).
fn seed_files(target: &str) -> Vec<Seed> {
    let dir = crossprof_tests::workspace_root()
        .join("tests/data/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(Seed::whole)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn crashes() -> PathBuf {
        crossprof_tests::target_dir().join("fuzz/crashes")
    }

    /// Every target, a short while each from a fixed seed (reproducible).
    #[test]
    fn every_target_survives_its_mutations() {
        let mut failed = Vec::new();
        for target in targets() {
            match run(&target, Duration::from_millis(300), 0x5eed, &crashes()) {
                Ok(ran) => assert!(ran.rounds > 0, "{}", target.name),
                Err(e) => failed.push(e),
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    /// `cargo xtask fuzz --secs N`: every target N seconds
    /// (`CROSSPROF_FUZZ_SECS`, default 10) from `CROSSPROF_FUZZ_SEED` (default:
    /// the clock), optionally only `CROSSPROF_FUZZ_TARGET`.
    #[test]
    #[ignore = "run by cargo xtask fuzz"]
    fn fuzz_for_a_while() {
        let secs: f64 = std::env::var("CROSSPROF_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10.0);
        let seed: u64 = std::env::var("CROSSPROF_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        let only = std::env::var("CROSSPROF_FUZZ_TARGET").ok();
        // `cargo xtask fuzz --coverage`: only the seeds, as libFuzzer's
        // starting corpus (one folder per target).
        if let Some(dir) = std::env::var_os("CROSSPROF_FUZZ_WRITE_SEEDS") {
            for target in targets() {
                let dir = PathBuf::from(&dir).join(target.name);
                std::fs::create_dir_all(&dir).unwrap();
                for (i, seed) in (target.seeds)().iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), &seed.bytes).unwrap();
                }
            }
            return;
        }
        let mut failed = Vec::new();
        for target in targets() {
            if only.as_deref().is_some_and(|o| o != target.name) {
                continue;
            }
            match run(&target, Duration::from_secs_f64(secs), seed, &crashes()) {
                Ok(ran) => println!(
                    "fuzz: {:<20} {:>9} rounds in {secs} s (seed {seed})",
                    target.name, ran.rounds
                ),
                Err(e) => {
                    println!("fuzz: {e}");
                    failed.push(e);
                }
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    /// Inputs that once crashed a target (`tests/data/fuzz/<target>/`) still
    /// do not.
    #[test]
    fn inputs_that_once_crashed_stay_fixed() {
        for target in targets() {
            for seed in seed_files(target.name) {
                (target.run)(&seed.bytes);
            }
        }
    }

    /// The driver finds what it is for: a parser that trusts a length byte.
    #[test]
    fn a_panicking_target_is_caught_and_its_input_saved() {
        let target = Target {
            name: "trusting",
            seeds: || vec![Seed::whole(vec![3, b'a', b'b', b'c'])],
            run: |b| {
                if let Some((&n, rest)) = b.split_first() {
                    let _ = &rest[..usize::from(n)];
                }
            },
        };
        let dir = crashes().join("self-test");
        let err = run(&target, Duration::from_secs(5), 7, &dir).unwrap_err();
        assert!(err.contains("trusting: panicked"), "{err}");
        let saved: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(!saved.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mutations_stay_within_their_limit_and_change_the_input() {
        let seed = Seed::whole(vec![7; 100]);
        let mut rng = Rng(1);
        let mut changed = 0;
        for _ in 0..1000 {
            let mut input = seed.bytes.clone();
            mutate(&mut rng, &mut input, &seed, std::slice::from_ref(&seed));
            assert!(input.len() <= size_limit(&seed));
            changed += usize::from(input != seed.bytes);
        }
        assert!(changed > 900, "only {changed} of 1000 inputs changed");
    }
}
