//! Builds the kernel programs (probe-ebpf) with the nightly toolchain and bpf-linker
//! through aya-build, so that a plain `cargo build` yields a complete `crossprof`.
//! `cargo xtask bootstrap` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
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
