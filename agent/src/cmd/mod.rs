//! One module per command; `run` dispatches.

mod backup;
mod cat;
mod check;
mod copy;
mod forget;
mod init;
mod key;
mod ls;
mod prune;
mod repair;
mod restore;
mod restore_wait;
mod snapshots;
mod unlock;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Init { repository_version } => init::run(g, &repository_version),
        Command::Backup(args) => backup::run(g, &args),
        Command::Snapshots { json } => snapshots::run(g, json),
        Command::Ls { snapshot, json } => ls::run(g, &snapshot, json),
        Command::Cat { what, id } => cat::run(g, &what, id.as_deref()),
        Command::Restore(args) => restore::run(g, &args),
        Command::Forget(args) => forget::run(g, &args),
        Command::Check(args) => check::run(g, &args),
        Command::Prune(args) => prune::run(g, &args),
        Command::Copy(args) => copy::run(g, &args),
        Command::Repair(r) => repair::run(g, &r),
        Command::Key(k) => key::run(g, &k),
        Command::Unlock { remove_all } => unlock::run(g, remove_all),
        Command::Agent(args) => crate::agent::run(args),
        Command::RestoreWait(args) => restore_wait::run(&args),
    }
}

/// The snapshot as restic's JSON shows it, with `id` and `short_id` added.
pub fn snapshot_json(id: &repo_format::Id, s: &repo_format::Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("snapshot json");
    let o = v.as_object_mut().expect("object");
    o.insert("id".into(), id.to_hex().into());
    o.insert("short_id".into(), id.short().into());
    v
}
