//! The `crossprof` command.

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};
use crossprof::{
    cli::{Cli, Command},
    error::{Error, UsageError},
    record::record,
};

fn main() -> ExitCode {
    crossprof::summary::mark_process_start();
    crossprof::crash::install();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                return ExitCode::from(2);
            }
            _ => return fail(&Error::Usage(UsageError::Syntax(syntax_error(&e)))),
        },
    };
    // The agent's log may go to a file (reopened on SIGHUP).
    if let Command::Agent(args) = &cli.command
        && let Some(path) = &args.log_file
        && let Err(e) = crossprof::agent::logfile::open(path)
    {
        return fail(&Error::Usage(e));
    }
    // inferno logs an error for an empty profile; crossprof says so itself.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,inferno=off"))
        .format_timestamp(None)
        .target(env_logger::Target::Pipe(Box::new(
            crossprof::agent::logfile::Sink,
        )))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            return fail(&Error::Io {
                what: "start the async runtime",
                source,
            });
        }
    };
    let result = match cli.command {
        Command::Record(args) => runtime.block_on(record(args)),
        Command::Diff(args) => crossprof::diff::diff(&args),
        Command::Agent(args) => runtime.block_on(crossprof::agent::agent(args)),
        Command::Check(args) => crossprof::check::check(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => fail(&e),
    }
}

/// clap's message, on one line, with what to do.
fn syntax_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    format!("{first}: see `crossprof --help`")
}

/// One line on stderr, the error's exit status. Multi-line details (a verifier log)
/// go to the debug log instead.
fn fail(e: &Error) -> ExitCode {
    let text = e.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("unknown error");
    if lines.next().is_some() {
        log::debug!("{text}");
        eprintln!("crossprof: error: {first} (RUST_LOG=debug shows the details)");
    } else {
        eprintln!("crossprof: error: {first}");
    }
    ExitCode::from(e.exit_code() as u8)
}
