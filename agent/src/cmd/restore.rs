//! `stash restore`.

use std::sync::Arc;

use anyhow::{Context, Result};
use repo_format::ops::progress::Progress;
use repo_format::ops::restore::{restore_with_progress, RestoreOptions};
use repo_format::repository::lock::RepoLock;
use serde_json::json;

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::progress::{Mode, Reporter};
use crate::{format, repo};

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<u8> {
    let started = std::time::Instant::now();
    let r = repo::open(g)?;
    let _lock = RepoLock::acquire(r.clone(), false)?;
    let (id, s) = r.find_snapshot(&a.snapshot)?;
    r.load_index().context("loading the index")?;
    if !a.json {
        println!(
            "restoring snapshot {} of [{}] at {} to {}",
            id.short(),
            s.paths.join(" "),
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
        &s.tree,
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
    if a.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
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
