//! `stash restore`.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use repo_format::ops::progress::Progress;
use repo_format::ops::restore::{restore_with_progress, RestoreOptions};
use serde_json::json;

use crate::cli::{AdoptSelectArgs, GlobalArgs, RestoreArgs};
use crate::progress::{Mode, Reporter};
use crate::{format, repo};

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<u8> {
    let started = std::time::Instant::now();
    let r = repo::open(g)?;
    let _lock = super::read_lock(g, &r, "restore")?;
    r.load_index().context("loading the index")?;
    let (id, s, tree, what) = match (a.adopt.adopt, &a.snapshot) {
        (Some(tool), _) => adopted(&r, tool.tool(), &a.adopt)?,
        (None, Some(spec)) => {
            let (id, s) = super::find_snapshot(&r, spec)?;
            let tree = s.tree;
            let what = format!("[{}]", s.paths.join(" "));
            (id, s, tree, what)
        }
        (None, None) => anyhow::bail!("name a snapshot, or choose one with --adopt"),
    };
    if !a.json {
        println!(
            "restoring snapshot {} of {what} at {} to {}",
            id.short(),
            s.time
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            a.target.display()
        );
    }
    let progress = Arc::new(Progress::default());
    let mode = if a.json { Mode::Json } else { Mode::Auto };
    let reporter = Reporter::start(progress.clone(), mode, "restore");
    let res = restore_with_progress(
        &r,
        &tree,
        &RestoreOptions {
            target: a.target.clone(),
            includes: a.includes.clone(),
            excludes: a.excludes.clone(),
            overwrite: a.overwrite,
            delete: a.delete,
            verify: a.verify,
            threads: if a.read_threads > 0 {
                a.read_threads
            } else {
                let cpus = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2);
                (2 * cpus).max(r.backend().connections())
            },
            privileged: a.privileged,
            skip_top: Vec::new(),
        },
        &progress,
    );
    reporter.finish();
    let res = res?;
    for e in &res.errors {
        if a.json {
            let line = json!({"message_type": "error", "error": {"message": e.message}, "during": "restore", "item": e.path});
            eprintln!("{line}");
        } else {
            eprintln!("error: {:?}: {}", e.path, e.message);
        }
    }
    for e in &res.skipped {
        if a.json {
            let line = json!({"message_type": "warning", "warning": {"message": e.message}, "during": "restore", "item": e.path});
            eprintln!("{line}");
        } else {
            eprintln!("warning: {:?}: {}", e.path, e.message);
        }
    }
    if a.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "entries_withheld": res.skipped.len(),
                "snapshot_id": id.to_hex(),
                "files_restored": res.files,
                "files_skipped": res.files_skipped,
                "dirs_restored": res.dirs,
                "other_restored": res.others,
                "total_bytes": res.bytes,
                "bytes_written": res.bytes_written,
                "files_deleted": res.deleted,
                "errors": res.errors.len(),
                "seconds_elapsed": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        let deleted = if res.deleted > 0 {
            format!("; {} entries deleted", res.deleted)
        } else {
            String::new()
        };
        println!(
            "restored {} files ({} left unchanged), {} directories, {} other entries, {} ({} written) in {}{deleted}",
            res.files,
            res.files_skipped,
            res.dirs,
            res.others,
            format::bytes(res.bytes),
            format::bytes(res.bytes_written),
            format::duration(started.elapsed()),
        );
    }
    if res.errors.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "Fatal: {} error(s) during restore; see above for what was not restored",
            res.errors.len()
        );
        Ok(1)
    }
}

/// The snapshot `--adopt` and the selectors choose (see
/// [`super::adopt::choose_tree`]).
fn adopted(
    r: &repo_format::Repository,
    tool: stash_api::adopt::Tool,
    a: &AdoptSelectArgs,
) -> Result<(
    repo_format::Id,
    repo_format::Snapshot,
    repo_format::Id,
    String,
)> {
    use stash_api::adopt::Selector;
    let sel = Selector {
        namespace: a.namespace.clone(),
        pvc: a.pvc.clone(),
        pvc_uid: a.pvc_uid.clone(),
        pod: a.pod.clone(),
        volume: a.volume.clone(),
        replica: a.replica.clone(),
        path: a.path.clone(),
    };
    sel.check(tool).map_err(|e| anyhow!(e))?;
    let at = match a.at.as_deref() {
        None | Some("latest") => None,
        Some(t) => Some(super::parse_time(t, "--at")?),
    };
    let all = r.snapshots_readable()?;
    super::warn_unreadable(&all.unreadable);
    super::adopt::choose_tree(r, tool, all.snapshots, &sel, at)
}
