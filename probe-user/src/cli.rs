//! The command line.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

/// crossprof: an eBPF profiler for services that mix .NET, Go and native code.
#[derive(Debug, Parser)]
#[command(name = "crossprof", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once per run: the size of the largest (the agent's) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample on-CPU stacks and write folded stacks, an SVG flamegraph and a summary.
    ///
    /// Examples:
    ///   crossprof record -- ./myserver --port 8080     profile a command until it exits
    ///   crossprof record --pid 4242 --duration 30      profile a running process for 30 s
    ///   crossprof record --duration 10 --freq 999      the whole system, 10 s at 999 Hz
    #[command(verbatim_doc_comment)]
    Record(RecordArgs),
    /// Draw a differential flamegraph of two profiles (folded stacks or pprof):
    /// red grew, blue shrank, both normalised to the same total.
    ///
    /// Example:
    ///   crossprof diff before/profile.pb.gz after/profile.pb.gz -o diff.svg
    #[command(verbatim_doc_comment)]
    Diff(DiffArgs),
    /// Profile continuously: the whole host (or --pid targets) at 19 Hz, cut
    /// into windows written to --dir as pprof and folded stacks, served over
    /// HTTP (a pprof scrape endpoint, an SVG per window, a live page).
    ///
    /// Examples:
    ///   crossprof agent --dir /var/lib/crossprof
    ///   crossprof agent --off-cpu --window 30s --retain 6h --max-disk 200MB
    ///   crossprof agent --listen 0.0.0.0:7070 --token-file /etc/crossprof/token
    ///   go tool pprof http://127.0.0.1:7070/debug/pprof/profile?seconds=10
    #[command(verbatim_doc_comment)]
    Agent(AgentArgs),
    /// Say what this kernel offers crossprof and which modes run here; with
    /// --load, load every program (nothing is attached) and print what the
    /// verifier made of it.
    ///
    /// Examples:
    ///   crossprof check
    ///   crossprof check --load --json
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
}

/// `crossprof check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also load every program and print its verified instructions, stack and
    /// load time (exit 2 if the kernel refuses one).
    #[arg(long)]
    pub load: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A duration: seconds, or a number with s, m, h or d (`90`, `30s`, `5m`, `24h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration: use e.g. 30s, 5m, 24h or 2d");
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A size: bytes, or a number with KB, MB, GB (powers of 1024; `K`, `M`,
/// `G`, `KiB`... also read).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size: use e.g. 500MB or 1GB");
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" | "TIB" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(bad());
    }
    // A size past what a disk holds is a typo, not a limit: said, never
    // saturated into "no limit".
    if bytes > MAX_SIZE as f64 {
        return Err(format!(
            "{s:?} is more than {} PiB: give a size a disk can hold, e.g. 1GB",
            MAX_SIZE >> 50
        ));
    }
    if bytes < MIN_SIZE as f64 {
        return Err(format!(
            "{s:?} cannot hold a window: give at least {MIN_SIZE} bytes (4KB)"
        ));
    }
    Ok(bytes as u64)
}

/// The largest size [`parse_size`] takes (1 EiB).
pub const MAX_SIZE: u64 = 1 << 60;
/// The smallest (a window's files take a few KiB).
pub const MIN_SIZE: u64 = 4096;

/// `--window`: a duration (see [`parse_duration`]) of at least
/// [`MIN_WINDOW`]: each window is two files written and synced.
pub fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_WINDOW {
        return Err(format!(
            "{s:?} is shorter than {MIN_WINDOW:?}: each window is two files on disk; give e.g. 10s"
        ));
    }
    Ok(d)
}

/// The shortest `--window`.
pub const MIN_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

/// `crossprof agent` options.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Profile only this process (and its threads); repeat for several.
    /// Without --pid, --comm, --cgroup or --container, the whole host,
    /// processes that start later included.
    #[arg(allow_negative_numbers = true, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Profile the processes with this name (as `ps -o comm` shows it, at
    /// most 15 characters): those running now, and those that `exec` it
    /// later (selected in the kernel); repeat for several: --comm nginx.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Profile the threads in this cgroup (v2; its folder, e.g.
    /// /sys/fs/cgroup/system.slice/app.service; not its sub-cgroups),
    /// selected in the kernel; repeat for several.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Profile the processes of this container: its id, or at least its
    /// first 12 hex digits as `docker ps` or `crictl ps` shows them (found by
    /// its cgroup, selected in the kernel as with --cgroup); repeat for
    /// several.
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Samples per second on each CPU.
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "HZ",
        default_value_t = 19
    )]
    pub freq: u64,

    /// Also profile off-CPU time: each stack a thread blocked with (a system
    /// call, a lock, a sleep), weighted by the time until it ran again, under
    /// its cause (`[blocked: futex]`, `[sleep]`, ...): the pprof profiles
    /// then carry an off_cpu value beside cpu.
    #[arg(long)]
    pub off_cpu: bool,

    /// With --off-cpu: leave out off-CPU spans shorter than this many
    /// microseconds (dropped in the kernel).
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "USECS",
        default_value_t = 1000
    )]
    pub min_block: u64,

    /// Also profile goroutine waits in Go processes: each goroutine that
    /// parked (on a channel, a mutex, a sleep, I/O), with the stack it parked
    /// in, weighted by the time until it was made runnable, under
    /// `[wait: REASON]`: the pprof profiles then carry a go_wait value.
    #[arg(long)]
    pub go_waits: bool,

    /// Sample every goroutine's state and wait reason HZ times a second in Go
    /// processes, from their memory (read-only; the target runs nothing for
    /// it): each window lists a Go process's goroutines' time per state
    /// (goroutine_states in /api/windows); 0 turns it off:
    /// --go-state-sampling 50.
    #[arg(
        long,
        value_name = "HZ",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=1000)
    )]
    pub go_state_sampling: u64,

    /// With --go-waits: leave out goroutine waits shorter than this many
    /// microseconds (dropped in the kernel).
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "USECS",
        default_value_t = 1000
    )]
    pub min_go_wait: u64,

    /// Name .NET JIT code through the runtime's perf map and jitdump, which
    /// crossprof asks the runtime to write (in the process's /tmp; .NET 8 and
    /// later, or started with DOTNET_PerfMapEnabled=1), instead of reading
    /// the runtime's own memory: the way before crossprof read .NET 10, 8 and 3.1
    /// memory, and the way for other versions whatever this says. Costs the
    /// target its writing: crossprof agent --dotnet-perf-map.
    #[arg(long)]
    pub dotnet_perf_map: bool,

    /// Open no GC event session with .NET processes (over their diagnostics
    /// socket): no `[gc]` marks and no GC figures; with their JIT code named
    /// from memory (the default on .NET 10, 8 and 3.1) crossprof then makes no
    /// connection to the runtime at all.
    #[arg(long)]
    pub no_dotnet_gc: bool,

    /// Length of a window: 60s, 5m, ...
    #[arg(allow_hyphen_values = true, long, value_name = "DURATION", value_parser = parse_window, default_value = "60s")]
    pub window: std::time::Duration,

    /// Folder the windows are written to (created 0700; files 0600).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/crossprof")]
    pub dir: PathBuf,

    /// Delete windows older than this: 24h, 7d, ...
    #[arg(allow_hyphen_values = true, long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    pub retain: std::time::Duration,

    /// Keep the folder's windows under this size, oldest deleted first: 1GB, 200MB, ...
    #[arg(allow_hyphen_values = true, long, value_name = "SIZE", value_parser = parse_size, default_value = "1GB")]
    pub max_disk: u64,

    /// Address of the HTTP server. Anything but a loopback address needs
    /// --token-file.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,

    /// Also send every window to this OpenTelemetry endpoint as OTLP
    /// profiles over HTTP (protobuf, gzip), e.g. an OpenTelemetry
    /// Collector's http://collector:4318 (sent to URL/v1development/profiles).
    #[arg(long, value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// How --otlp-endpoint is spoken to: `http` (protobuf over HTTP, to
    /// URL/v1development/profiles, port 4318) or `grpc` (the
    /// ProfilesService/Export call, port 4317).
    #[arg(
        long,
        value_name = "PROTOCOL",
        value_enum,
        default_value = "http",
        requires = "otlp_endpoint"
    )]
    pub otlp_protocol: OtlpProtocol,

    /// Also send every window to Pyroscope's ingest API at this URL, one
    /// request per process (a pprof profile), e.g. http://pyroscope:4040.
    #[arg(long, value_name = "URL", value_parser = parse_pyroscope_url)]
    pub pyroscope_url: Option<String>,

    /// The Pyroscope application name of each process: text and
    /// placeholders {comm}, {exe}, {pid}, {host}.
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "{comm}",
        value_parser = crate::pyroscope::parse_app_name
    )]
    pub app_name: String,

    /// The tenant the windows sent to Pyroscope and OTLP belong to
    /// (X-Scope-OrgID).
    #[arg(long, value_name = "ID")]
    pub tenant_id: Option<String>,

    /// File whose first line is the bearer token sent with every export
    /// request (--otlp-endpoint, --pyroscope-url).
    #[arg(long, value_name = "FILE", conflicts_with = "export_basic_auth_file")]
    pub export_token_file: Option<PathBuf>,

    /// File whose first line is USER:PASSWORD, sent as basic authentication
    /// with every export request.
    #[arg(long, value_name = "FILE")]
    pub export_basic_auth_file: Option<PathBuf>,

    /// Trust only the certificates of this PEM file for https export URLs
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Present this client certificate (PEM, with its chain) to https
    /// export URLs; needs --key-file.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// The private key of --cert-file (PEM; a file only root can read).
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// File whose first line is the bearer token every HTTP request must
    /// carry (Authorization: Bearer TOKEN); required off loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Write the log here instead of stderr; SIGHUP reopens it (for logrotate).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Add a thread level (`NAME (TID)`, the `thread` label in pprof).
    #[arg(long)]
    pub per_thread: bool,

    /// Add a level, as `record --group-by` does, that pprof shows as a label:
    /// `trace` (`trace_id`, the W3C trace id of the HTTP request served),
    /// `goroutine`, `state`, `label:KEY` (a Go pprof label); repeat for
    /// several: --group-by trace --group-by label:worker.
    #[arg(long = "group-by", value_name = "LEVEL", value_parser = parse_group_by)]
    pub group_by: Vec<GroupBy>,

    /// Also look for separate debug files here; repeat for several.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,

    /// As `record --debuginfod`: debug files from the servers in DEBUGINFOD_URLS.
    #[arg(long)]
    pub debuginfod: bool,
}

/// `crossprof diff` options.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The earlier profile: a folded stacks file or a pprof profile.
    #[arg(value_name = "BEFORE")]
    pub before: PathBuf,
    /// The later profile; the graph shows its stacks.
    #[arg(value_name = "AFTER")]
    pub after: PathBuf,
    /// The SVG to write, e.g. -o diff.svg.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "diff.svg"
    )]
    pub output: PathBuf,
    /// The graph's title.
    #[arg(long)]
    pub title: Option<String>,
}

/// An output format of `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Folded stacks, `profile.folded` (inferno's and FlameGraph's input).
    Folded,
    /// An SVG flamegraph, `flamegraph.svg`.
    Svg,
    /// A gzipped pprof profile, `profile.pb.gz` (`go tool pprof`, Parca,
    /// Pyroscope, Grafana).
    Pprof,
    /// speedscope's JSON file format, `profile.speedscope.json`.
    Speedscope,
}

/// A frame level `--group-by` adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// The goroutine of a Go process.
    Goroutine,
    /// The value of a Go pprof label.
    Label(String),
    /// The goroutine's status at the sample (`[running]`, `[syscall]`).
    State,
    /// The W3C trace id of the HTTP request the goroutine or thread was
    /// serving (`trace <id>`, `[no trace]`).
    Trace,
    /// The container a process runs in (`container <id, 12 digits>`, under
    /// `pod <uid>` for a Kubernetes pod's; `[host]`), above the process.
    Container,
}

impl GroupBy {
    /// Its `--group-by` name (what `parse_group_by` reads).
    pub fn name(&self) -> String {
        match self {
            GroupBy::Goroutine => "goroutine".into(),
            GroupBy::Label(key) => format!("label:{key}"),
            GroupBy::State => "state".into(),
            GroupBy::Trace => "trace".into(),
            GroupBy::Container => "container".into(),
        }
    }
}

/// `--otlp-protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP.
    Http,
    /// gRPC.
    Grpc,
}

/// The profiles signal's path under an OTLP/HTTP endpoint (the
/// specification's default, opentelemetry-proto v1.10.0 `docs/specification.md`).
pub const OTLP_PROFILES_PATH: &str = "/v1development/profiles";

/// `--otlp-endpoint URL` as the URL requests go to (the profiles signal's
/// path added unless it ends with it), or why it cannot be one.
pub fn parse_otlp_endpoint(url: &str) -> Result<String, String> {
    let url = parse_http_url(url)?;
    Ok(if url.ends_with(OTLP_PROFILES_PATH) {
        url
    } else {
        format!("{url}{OTLP_PROFILES_PATH}")
    })
}

/// `--pyroscope-url URL` as the ingest URL (its path added unless it ends
/// with it), or why it cannot be one.
pub fn parse_pyroscope_url(url: &str) -> Result<String, String> {
    use crate::pyroscope::INGEST_PATH;
    let url = parse_http_url(url)?;
    Ok(if url.ends_with(INGEST_PATH) {
        url
    } else {
        format!("{url}{INGEST_PATH}")
    })
}

/// An http:// or https:// URL with a host, no trailing `/`.
fn parse_http_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} names no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} holds spaces or control characters"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A `--group-by` level by its name.
pub(crate) fn parse_group_by(s: &str) -> Result<GroupBy, String> {
    match s {
        "goroutine" => Ok(GroupBy::Goroutine),
        "state" => Ok(GroupBy::State),
        "trace" => Ok(GroupBy::Trace),
        "container" => Ok(GroupBy::Container),
        _ => match s.strip_prefix("label:") {
            Some(key) if !key.is_empty() => Ok(GroupBy::Label(key.to_owned())),
            _ => Err(format!(
                "{s:?} is not a level: use goroutine, state, trace, container or label:KEY, e.g. --group-by label:worker"
            )),
        },
    }
}

/// What a profile weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// On-CPU samples (counts of samples).
    Cpu,
    /// Off-CPU time: each stack a thread left the CPU with, weighted by the
    /// microseconds until it ran again, under its blocking state.
    Offcpu,
    /// Wall-clock time: on-CPU samples (one sample period each, under
    /// `[running]`) and off-CPU time together, per thread, in microseconds;
    /// in Go processes also goroutine waits, per goroutine (`goroutine N`).
    Wall,
    /// Goroutine blocking in Go processes: each goroutine that parked (on a
    /// channel, a mutex, a sleep, I/O, ...), with the stack it parked in,
    /// weighted by the microseconds until it was made runnable, under
    /// `[wait: REASON]`.
    Goblock,
}

impl Mode {
    /// Are goroutine waits part of this profile (with the goroutine-state
    /// probes they need)?
    pub fn goroutine_waits(self) -> bool {
        matches!(self, Mode::Goblock | Mode::Wall)
    }
}

fn parse_trace_id(s: &str) -> Result<String, String> {
    let hex = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex && s.bytes().any(|b| b != b'0') {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a trace id: give the 32 lower-case hex digits of a traceparent's trace-id, e.g. --trace-id 0af7651916cd43dd8448eb211c80319c"
        ))
    }
}

/// `crossprof record` options.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// What to profile: cpu (on-CPU samples), offcpu (time threads spend
    /// blocked or sleeping, in microseconds, with the stack they blocked in and
    /// a leaf such as `[blocked: futex]`, `[sleep]`, `[blocked: io]`; time spent
    /// runnable, waiting for a CPU, is not counted), wall (every moment of
    /// each thread, in microseconds: on-CPU stacks under `[running]`, blocked
    /// as in offcpu, and preempted, waiting for a CPU, under `[waiting for
    /// CPU]`), or goblock (Go
    /// goroutines parked: the stack each parked in, weighted by the
    /// microseconds until it was made runnable, under `[wait: chan receive]`,
    /// `[wait: sync.Mutex.Lock]`, ...; uses the --go-states probes):
    /// crossprof record --mode offcpu -- ./server.
    #[arg(long, value_enum, default_value_t = Mode::Cpu)]
    pub mode: Mode,

    /// With --mode offcpu, wall or goblock: drop off-CPU spans and goroutine
    /// waits shorter than this many microseconds, in the kernel (counted in
    /// summary.json as off_cpu_short_dropped and go_blocks_short_dropped), e.g.
    /// --min-block 1000 for waits of 1 ms and more.
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "USECS",
        default_value_t = 1
    )]
    pub min_block: u64,

    /// With --mode wall or goblock: a threshold of its own for goroutine
    /// waits, in microseconds (default: --min-block's), e.g. --min-block 1000
    /// --min-go-wait 100.
    #[arg(allow_negative_numbers = true, long, value_name = "USECS")]
    pub min_go_wait: Option<u64>,

    /// With --mode offcpu or wall: also show where in the kernel each wait
    /// happened (the kernel stack the thread blocked with, e.g.
    /// do_nanosleep;schedule). Costs about 1.2 µs per block.
    #[arg(long)]
    pub kernel_waits: bool,

    /// Profile this process and all its threads; repeat for several (--pid 10 --pid 20).
    /// Without --pid, --container and a command, the whole system is profiled.
    #[arg(allow_negative_numbers = true, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Profile the processes of this container: its id, or at least its
    /// first 12 hex digits as `docker ps` or `crictl ps` shows them (found by
    /// its cgroup, selected in the kernel: processes it starts later too);
    /// repeat for several.
    #[arg(long = "container", value_name = "ID", conflicts_with = "command")]
    pub containers: Vec<String>,

    /// With --pid: also profile the processes those start from now on, and
    /// theirs (a process joins in the kernel as it is created, before it
    /// runs): crossprof record --pid 4711 --children.
    #[arg(long, conflicts_with = "no_children")]
    pub children: bool,

    /// With a command: profile only the command's own process, not the
    /// processes it starts (by default a command's whole process tree is
    /// profiled, as perf does): crossprof record --no-children -- make.
    #[arg(long)]
    pub no_children: bool,

    /// Stop after this many seconds (decimals allowed: --duration 2.5). Default: until
    /// Ctrl-C or SIGTERM, or until the command exits.
    #[arg(allow_negative_numbers = true, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Samples per second on each CPU, e.g. --freq 999. At most the kernel's
    /// perf_event_max_sample_rate.
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "HZ",
        default_value_t = 99
    )]
    pub freq: u64,

    /// What to write besides summary.json; repeat or separate with commas:
    /// --format pprof,speedscope. Default: folded, svg and pprof.
    #[arg(
        long = "format",
        value_name = "FORMAT",
        value_enum,
        value_delimiter = ',',
        default_values_t = [Format::Folded, Format::Svg, Format::Pprof]
    )]
    pub formats: Vec<Format>,

    /// Folder for the profile files (see --format) and summary.json, e.g. -o /tmp/prof.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "DIR",
        default_value = "flamegraphs"
    )]
    pub output: PathBuf,

    /// Keep samples of idle CPUs (the swapper task) in whole-system profiles, e.g. to
    /// see how busy the machine was: crossprof record --duration 5 --include-idle.
    #[arg(long)]
    pub include_idle: bool,

    /// Add a frame level under each process with the thread a sample ran on, as
    /// `NAME (TID)`, e.g. `.NET TP Worker (4711)`: crossprof record --per-thread -- ./app.
    #[arg(long)]
    pub per_thread: bool,

    /// Add a frame level under each process; repeat for several. `goroutine` puts
    /// each sample of a Go process under its goroutine (`goroutine 18`, `[no
    /// goroutine]` on a system stack); `state` under the goroutine's status
    /// (`[running]`, `[syscall]` for a sample in a system call); `label:KEY` under
    /// the value of its pprof label KEY (`worker=w3`); `trace` (any process)
    /// under the W3C trace id of the plaintext HTTP/1.x request the goroutine
    /// (Go) or thread was serving, from reading the request (its `traceparent`
    /// header) to writing the response (`trace 0af7...`, `[no trace]`):
    /// crossprof record --group-by label:worker -- ./server.
    #[arg(long = "group-by", value_name = "LEVEL", value_parser = parse_group_by)]
    pub group_by: Vec<GroupBy>,

    /// Follow every goroutine's state in Go processes (uprobes at the entry of
    /// runtime.casgstatus and runtime.newproc1, never at a return) and report in
    /// summary.json how each goroutine, and each creation site, spent its time:
    /// running, runnable, in system calls, and waiting per reason (chan receive,
    /// sleep, sync.Mutex.Lock, IO wait, ...). Costs about a microsecond per
    /// goroutine switch in the target (see the README), so it is off unless asked:
    /// crossprof record --go-states -- ./server.
    #[arg(long)]
    pub go_states: bool,

    /// Sample every goroutine's state and wait reason HZ times a second in Go
    /// processes, from their memory (read-only; nothing is trapped, so the
    /// target's goroutine switches cost nothing more), and report in
    /// summary.json (goroutines_sampled) the shares per goroutine and per
    /// creation site; 0 turns it off: crossprof record --go-state-sampling 50
    /// -- ./server.
    #[arg(
        long,
        value_name = "HZ",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=1000)
    )]
    pub go_state_sampling: u64,

    /// Name .NET JIT code through the runtime's perf map and jitdump, which
    /// crossprof asks the runtime to write (in the process's /tmp; .NET 8 and
    /// later, or started with DOTNET_PerfMapEnabled=1), instead of reading
    /// the runtime's own memory: the way before crossprof read .NET 10, 8 and 3.1
    /// memory, and the way for other versions whatever this says. Costs the
    /// target its writing: crossprof record --dotnet-perf-map -- dotnet app.dll.
    #[arg(long)]
    pub dotnet_perf_map: bool,

    /// Open no GC event session with .NET processes (over their diagnostics
    /// socket): no `[gc]` marks and no GC figures; with their JIT code named
    /// from memory (the default on .NET 10, 8 and 3.1) crossprof then makes no
    /// connection to the runtime at all.
    #[arg(long)]
    pub no_dotnet_gc: bool,

    /// Walk native stacks by frame pointers only, as perf does, instead of by
    /// each object's `.eh_frame` rules (with frame pointers where an object has
    /// none): a little cheaper, but stacks through code built without frame
    /// pointers (gcc -O2, most distribution libraries) lose their callers.
    /// For comparison: crossprof record --frame-pointers-only -- ./app.
    #[arg(long)]
    pub frame_pointers_only: bool,

    /// Also capture what the recording read (ring records, `/proc` reads,
    /// kernel symbols) into DIR, for `crossprof::replay` (the replay tier of
    /// the tests). For developers.
    #[arg(long, hide = true, value_name = "DIR")]
    pub capture: Option<PathBuf>,

    /// Also look for separate debug files (`.gnu_debuglink`, `.build-id/`) here;
    /// repeat for several: --debug-dir /opt/symbols. Next to each binary and
    /// /usr/lib/debug are always searched.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,

    /// Fetch the debug files of stripped binaries found nowhere here from the
    /// debuginfod servers in DEBUGINFOD_URLS (by build id; kept in
    /// /var/cache/crossprof/debuginfod; at most 60 s of waiting a run).
    #[arg(long)]
    pub debuginfod: bool,

    /// After the recording, print on stdout a table of calls across runtimes
    /// (where a stack crosses with `[cgo]` or `[P/Invoke]`) with their samples,
    /// most first: `Prog::Main (managed) -> main.AddInts (Go)`. The caller is the
    /// last frame before the crossing and the callee the first after it, glue
    /// (`runtime.cgocall`, IL stubs) skipped; a sample counts once per distinct
    /// edge in its stack. The folded stacks, SVG and summary.json (which always
    /// lists the edges as `transitions`) are still written, and the usual final
    /// line still goes to stderr, so stdout holds the table alone:
    /// crossprof record --only-transitions -- ./app > edges.txt.
    #[arg(long)]
    pub only_transitions: bool,

    /// Also write DIR/timeline.json in the Chrome trace event format (open it in
    /// ui.perfetto.dev or chrome://tracing): per process and thread, its samples
    /// and running spans, its blocked spans with their reason (with --mode
    /// offcpu or wall), and the GC pauses of .NET processes:
    /// crossprof record --mode wall --timeline -- ./server.
    #[arg(long)]
    pub timeline: bool,

    /// Write the wall-clock profile of one request: only what the goroutines
    /// and threads serving the HTTP request with this W3C trace id did, across
    /// every target process, under `trace ID` (implies --group-by trace, and
    /// --mode wall unless another mode is given):
    /// crossprof record --trace-id 0af7651916cd43dd8448eb211c80319c --pid 10 --pid 20.
    #[arg(long, value_name = "ID", value_parser = parse_trace_id)]
    pub trace_id: Option<String>,

    /// List in summary.json (`slow_requests`) the traced HTTP requests that took
    /// this many milliseconds or more, each with its time by cause (`[running]`,
    /// `[blocked: io]`, `[wait: sync.Mutex.Lock]`, ...; implies --group-by
    /// trace, and --mode wall unless another mode is given; goroutine waits need
    /// --mode goblock): crossprof record --slow-ms 200 --mode goblock --pid 10.
    #[arg(allow_negative_numbers = true, long, value_name = "MS")]
    pub slow_ms: Option<u64>,

    /// No live status line on stderr (the final summary line is still printed),
    /// e.g. in scripts: crossprof record -q --duration 10.
    #[arg(short, long)]
    pub quiet: bool,

    /// Command to start and profile until it exits, after `--`: crossprof record -- ./app arg.
    /// crossprof exits with its exit status.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profiles_path_is_added_once() {
        assert_eq!(
            parse_otlp_endpoint("http://collector:4318").unwrap(),
            "http://collector:4318/v1development/profiles"
        );
        assert_eq!(
            parse_otlp_endpoint("https://c.example/otlp/").unwrap(),
            "https://c.example/otlp/v1development/profiles"
        );
        assert_eq!(
            parse_otlp_endpoint("http://c:4318/v1development/profiles").unwrap(),
            "http://c:4318/v1development/profiles"
        );
        assert!(parse_otlp_endpoint("collector:4318").is_err());
        assert_eq!(
            parse_pyroscope_url("http://p:4040/").unwrap(),
            "http://p:4040/ingest"
        );
        assert_eq!(
            parse_pyroscope_url("http://p/ingest").unwrap(),
            "http://p/ingest"
        );
        assert!(parse_pyroscope_url("p:4040").is_err());
        assert!(parse_otlp_endpoint("ftp://c").is_err());
        assert!(parse_otlp_endpoint("http://").is_err());
        assert!(parse_otlp_endpoint("http://a b").is_err());
    }

    #[test]
    fn every_group_by_level_is_read_back_from_its_name() {
        for level in [
            GroupBy::Goroutine,
            GroupBy::Label("worker".into()),
            GroupBy::State,
            GroupBy::Trace,
            GroupBy::Container,
        ] {
            assert_eq!(parse_group_by(&level.name()), Ok(level));
        }
        assert!(parse_group_by("label:").is_err());
    }
}
