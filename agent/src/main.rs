//! `stash`: a restic-compatible backup tool on a repository, and the node
//! agent (`stash agent`, run by a DaemonSet) with its init-container helper
//! (`stash restore-wait`).

mod agent;
mod cli;
mod cmd;
mod format;
mod progress;
mod repo;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for a backup that finished but skipped files (restic's code 3).
pub const EXIT_INCOMPLETE: u8 = 3;

fn main() -> ExitCode {
    // A bug must still end in one line a person can report, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("stash: internal error{at}: {msg} (this is a bug; please report it)");
    }));
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STASH_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match args.global.verbose {
            0 => "error",
            1 => "info",
            2 => "debug",
            _ => "trace",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match cmd::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One or two lines a person can act on: the error and its causes.
            let mut msg = format!("stash: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}
