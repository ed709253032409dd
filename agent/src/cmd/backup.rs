//! `stash backup`.

use anyhow::{Context, Result};
use std::sync::Arc;

use repo_format::ops::backup::{backup_with_progress, BackupOptions};
use repo_format::ops::progress::Progress;
use repo_format::repository::lock::{LockTiming, RepoLock};
use repo_format::FileType;
use serde_json::json;

use crate::cli::{BackupArgs, GlobalArgs};
use crate::progress::{Mode, Reporter};
use crate::{format, repo, EXIT_INCOMPLETE};

pub fn run(g: &GlobalArgs, a: &BackupArgs) -> Result<u8> {
    let started = std::time::Instant::now();
    let mut r = repo::open(g)?;
    let backend_connections = r.backend().connections();
    Arc::get_mut(&mut r)
        .expect("not shared yet")
        .set_write_options(repo_format::WriteOptions {
            pack_size: a.pack_size as usize * (1 << 20),
            compression: a.compression,
            upload_threads: a
                .upload_threads
                .map(|n| n as usize)
                .unwrap_or(backend_connections),
            ..Default::default()
        });
    // A lock that cannot be refreshed in time stops the backup before its
    // snapshot, so no prune elsewhere can delete what it still writes.
    let progress = Arc::new(Progress::default());
    let on_lost = {
        let p = progress.clone();
        Box::new(move || p.cancel())
    };
    let lock = RepoLock::acquire_with(r.clone(), false, LockTiming::default(), Some(on_lost))?;
    r.load_index().context("loading the index")?;
    let parent = a
        .parent
        .as_deref()
        .map(|p| r.find_id(FileType::Snapshot, p))
        .transpose()
        .context("--parent")?;
    let opts = BackupOptions {
        paths: a.paths.clone(),
        as_path: None,
        host: a.host.clone(),
        tags: a.tags.clone(),
        excludes: a.excludes.clone(),
        parent,
        force: a.force,
        time: a
            .time
            .as_deref()
            .map(|t| super::parse_time(t, "--time"))
            .transpose()?,
        with_atime: a.with_atime,
        max_unreadable: None,
        cross_mounts: a.cross_mounts,
        skip_top: Vec::new(),
    };
    let reporter = Reporter::start(
        progress.clone(),
        if a.json { Mode::Json } else { Mode::Auto },
        "backup",
    );
    let res = backup_with_progress(&r, &opts, &progress);
    reporter.finish();
    lock.check()?;
    let res = res?;
    let s = res.snapshot.summary.clone().unwrap_or_default();
    for e in &res.errors {
        if a.json {
            eprintln!(
                "{}",
                json!({"message_type": "error", "error": {"message": e.message}, "during": "archival", "item": e.path.to_string_lossy()})
            );
        } else {
            eprintln!("error: {}: {}", e.path.display(), e.message);
        }
    }
    if a.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "files_new": s.files_new,
                "files_changed": s.files_changed,
                "files_unmodified": s.files_unmodified,
                "dirs_new": s.dirs_new,
                "dirs_changed": s.dirs_changed,
                "dirs_unmodified": s.dirs_unmodified,
                "data_blobs": s.data_blobs,
                "tree_blobs": s.tree_blobs,
                "data_added": s.data_added,
                "data_added_packed": s.data_added_packed,
                "total_files_processed": s.total_files_processed,
                "total_bytes_processed": s.total_bytes_processed,
                "total_duration": started.elapsed().as_secs_f64(),
                "snapshot_id": res.snapshot_id.to_hex(),
                "parent": res.snapshot.parent.map(|p| p.to_hex()),
                "errors": res.errors.len(),
            })
        );
    } else {
        if let Some(p) = res.snapshot.parent {
            println!("using parent snapshot {}", p.short());
        }
        println!(
            "Files:       {:5} new, {:5} changed, {:5} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Dirs:        {:5} new, {:5} changed, {:5} unmodified",
            s.dirs_new, s.dirs_changed, s.dirs_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            format::bytes(s.data_added),
            format::bytes(s.data_added_packed)
        );
        println!(
            "processed {} files, {} in {}",
            s.total_files_processed,
            format::bytes(s.total_bytes_processed),
            format::duration(started.elapsed())
        );
        println!("snapshot {} saved", res.snapshot_id.short());
    }
    if res.errors.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "Warning: {} file(s) could not be read; the snapshot is incomplete",
            res.errors.len()
        );
        Ok(EXIT_INCOMPLETE)
    }
}
