//! Thin entry point: parse flags, set up tracing, hand over to the subcommand.

use std::process::ExitCode;

use clap::Parser;

use assayer::cli::{self, Cli, Command};

/// mimalloc: the audit pipeline allocates events on its decode thread and frees them on
/// the engine thread, which glibc's per-thread arenas serialise on a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Exit 2 means "blocking findings" (and NO-GO), so usage errors exit 1, not clap's 2.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // A daemon says what it is doing (started, restored, consuming, reconnecting,
    // stopped); one-shot commands speak only when something is wrong.
    init_tracing(if matches!(cli.command, Command::Daemon(_)) {
        "warn,assayer=info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Audit(args) => cli::audit::run(args),
        Command::Sim(args) => cli::sim::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Daemon(args) => cli::daemon::run(args),
        Command::CheckConfig(args) => cli::daemon::check(args),
        Command::Gate(args) => cli::gate::run(args),
        Command::Deploy(args) => cli::deploy::run(args),
        Command::Reconcile(args) => cli::reconcile::run(args),
        Command::Trace(args) => cli::trace::run(args),
        Command::Findings(args) => cli::findings::run(args),
        Command::Journal(args) => cli::journal::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("assayer: error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASSAYER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// The error and its causes, each cause once: several error types name their source in
/// their own message too, and printing both would say everything twice.
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
