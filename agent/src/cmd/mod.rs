//! One module per command; `run` dispatches.

pub(crate) mod adopt;
mod backup;
mod cat;
mod check;
mod copy;
mod dump;
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
    if g.no_lock && !reads_only(&cli.command) {
        anyhow::bail!(
            "--no-lock is only for commands that do not change the repository (snapshots, ls, cat, check, restore, dump)"
        );
    }
    match cli.command {
        Command::Init { repository_version } => init::run(g, &repository_version),
        Command::Backup(args) => backup::run(g, &args),
        Command::Snapshots { json, adopt } => match adopt {
            Some(a) => snapshots::run_adopt(g, a.tool(), json),
            None => snapshots::run(g, json),
        },
        Command::Ls { snapshot, json } => ls::run(g, &snapshot, json),
        Command::Cat { what, id } => cat::run(g, &what, id.as_deref()),
        Command::Restore(args) => restore::run(g, &args),
        Command::Dump(args) => dump::run(g, &args),
        Command::Forget(args) => forget::run(g, &args),
        Command::Check(args) => check::run(g, &args),
        Command::Prune(args) => prune::run(g, &args),
        Command::Copy(args) => copy::run(g, &args),
        Command::Repair(r) => repair::run(g, &r),
        Command::Key(k) => key::run(g, &k),
        Command::Unlock { remove_all } => unlock::run(g, remove_all),
        Command::Agent(args) => crate::agent::run(args),
        Command::RestoreWait(args) => restore_wait::run(&args),
        Command::Job(crate::cli::JobCommand::Backup(args)) => crate::agent::job::backup(args),
        Command::Job(crate::cli::JobCommand::Restore(args)) => crate::agent::job::restore(args),
    }
}

/// Whether a command only reads the repository (so `--no-lock` is safe).
fn reads_only(c: &Command) -> bool {
    matches!(
        c,
        Command::Snapshots { .. }
            | Command::Ls { .. }
            | Command::Cat { .. }
            | Command::Check(_)
            | Command::Restore(_)
            | Command::Dump(_)
    )
}

/// A time on the command line: RFC 3339, or "YYYY-MM-DD HH:MM:SS" local
/// time (restic's `--time`).
pub fn parse_time(s: &str, flag: &str) -> anyhow::Result<chrono::DateTime<chrono::FixedOffset>> {
    use anyhow::Context;
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .with_context(|| format!("{flag} {s:?}: use RFC 3339 or \"YYYY-MM-DD HH:MM:SS\""))?;
    chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.fixed_offset())
        .with_context(|| format!("{flag} {s:?}: not a valid local time"))
}

/// The snapshot as restic's JSON shows it, with `id` and `short_id` added.
pub fn snapshot_json(id: &repo_format::Id, s: &repo_format::Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("snapshot json");
    let o = v.as_object_mut().expect("object");
    o.insert("id".into(), id.to_hex().into());
    o.insert("short_id".into(), id.short().into());
    v
}

/// restic's warning for a snapshot file that does not load; the listing
/// goes on without it.
pub fn warn_unreadable(unreadable: &[(repo_format::Id, repo_format::Error)]) {
    for (id, e) in unreadable {
        eprintln!("Warning: could not load snapshot {id}: {e}");
    }
}

/// A snapshot by id, prefix or `latest` (the latest readable one, with a
/// warning for each damaged snapshot file passed over).
pub fn find_snapshot(
    r: &repo_format::Repository,
    spec: &str,
) -> anyhow::Result<(repo_format::Id, repo_format::Snapshot)> {
    let (found, skipped) = r.find_snapshot_readable(spec)?;
    if !skipped.is_empty() {
        warn_unreadable(&skipped);
        eprintln!(
            "Warning: `latest` is {}, the latest readable snapshot",
            found.0.short()
        );
    }
    Ok(found)
}

/// The lock of a command that only reads: restic's shared lock, or none
/// with `--no-lock` (a repository on read-only media or behind read-only
/// credentials, where a lock file cannot be written).
pub fn read_lock(
    g: &crate::cli::GlobalArgs,
    r: &std::sync::Arc<repo_format::Repository>,
    command: &str,
) -> anyhow::Result<Option<repo_format::repository::lock::RepoLock>> {
    use anyhow::Context;
    if g.no_lock {
        return Ok(None);
    }
    repo_format::repository::lock::RepoLock::acquire(r.clone(), false)
        .map(Some)
        .with_context(|| {
            format!("{command} needs a (shared) lock; for a read-only repository use --no-lock")
        })
}
