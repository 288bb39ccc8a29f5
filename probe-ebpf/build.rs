//! Rebuild the kernel programs when the bpf-linker binary changes: cargo does not
//! know that linking for bpfel-unknown-none runs it.
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
