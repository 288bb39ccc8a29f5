//! Builds the kernel programs (probe-ebpf) with the nightly toolchain and bpf-linker
//! through aya-build, so that a plain `cargo build` yields a complete `crossprof`.
//! `cargo xtask bootstrap` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    // The fuzz harnesses (`fuzz/`, built by `cargo fuzz` with sanitizer flags
    // that a BPF target cannot take) only need the parsers: an empty object
    // stands in for the kernel programs, which they never load.
    println!("cargo:rerun-if-env-changed=CROSSPROF_NO_EBPF");
    if std::env::var_os("CROSSPROF_NO_EBPF").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("probe-ebpf");
        std::fs::write(&out, b"").with_context(|| format!("write {}", out.display()))?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "probe-ebpf")
        .ok_or_else(|| anyhow!("probe-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed: run `cargo xtask bootstrap` first"
        ));
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    })
}
