//! `stash prune` (and the prune step of `forget --prune`): restic's
//! options and report, the work done by `repo_format::ops::prune`.

use anyhow::{Context, Result};
use repo_format::ops::prune::{self, PruneOptions, PruneStats};
use repo_format::repository::lock::RepoLock;
use repo_format::Repository;

use crate::cli::{GlobalArgs, PruneArgs, PruneOpts};
use crate::format::bytes;
use crate::repo;

/// The library options for the command line's.
pub fn options(o: &PruneOpts) -> PruneOptions {
    PruneOptions {
        max_unused: o.max_unused,
        max_repack_bytes: o.max_repack_size,
        repack_cacheable_only: o.repack_cacheable_only,
        repack_uncompressed: o.repack_uncompressed,
        ..PruneOptions::default()
    }
}

pub fn run(g: &GlobalArgs, a: &PruneArgs) -> Result<u8> {
    let r = repo::open(g)?;
    // A dry run changes nothing, but what it reports must not change under
    // it either: it takes the same lock (restic does too).
    let _lock = RepoLock::acquire(r.clone(), true).context("prune needs an exclusive lock")?;
    prune_locked(&r, &options(&a.opts), a.dry_run, a.json)
}

/// Plans, prints and (unless `dry_run`) executes a prune; the caller holds
/// the exclusive lock.
pub fn prune_locked(r: &Repository, opts: &PruneOptions, dry_run: bool, json: bool) -> Result<u8> {
    if !json {
        println!("loading indexes, snapshots and finding data still in use...");
    }
    let plan = prune::plan(r, opts)?;
    if !json {
        print_plan(&plan.stats, dry_run);
    }
    if dry_run {
        if json {
            println!("{}", serde_json::to_string(&plan.stats)?);
        }
        return Ok(0);
    }
    if plan.is_empty() {
        if json {
            println!("{}", serde_json::to_string(&plan.stats)?);
        } else {
            println!("nothing to do");
        }
        return Ok(0);
    }
    let stats = prune::execute(r, plan, opts)?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        println!(
            "repacked into {} new packs, wrote {} index files, removed {} old index files and {} packs",
            stats.packs_written,
            stats.index_files_written,
            stats.index_files_deleted,
            stats.packs_deleted
        );
        println!("done");
    }
    Ok(0)
}

/// Prints a plan that will not be carried out.
pub fn print_dry_run(s: &PruneStats, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        print_plan(s, true);
    }
    Ok(())
}

fn print_plan(s: &PruneStats, dry_run: bool) {
    let line = |what: &str, blobs: u64, size: u64| {
        println!("{what:<22}{blobs:>10} blobs / {}", bytes(size));
    };
    println!("checked {} snapshots", s.snapshots);
    line("used:", s.used_blobs, s.used_size);
    if s.duplicate_blobs > 0 {
        line("duplicates:", s.duplicate_blobs, s.duplicate_size);
    }
    line("unused:", s.unused_blobs, s.unused_size);
    if s.unreferenced_packs > 0 {
        println!(
            "{:<22}{:>10} packs / {}",
            "unreferenced:",
            s.unreferenced_packs,
            bytes(s.unreferenced_size)
        );
    }
    println!();
    let would = if dry_run { "would " } else { "" };
    line(&format!("{would}repack:"), s.repack_blobs, s.repack_size);
    line(
        &format!("{would}remove:"),
        s.remove_blobs + s.repack_removed_blobs,
        s.remove_size + s.repack_removed_size + s.unreferenced_size,
    );
    println!(
        "{:<22}{:>10} packs repacked, {} packs deleted whole, {} kept",
        "packs:",
        s.packs_repack,
        s.packs_remove + s.unreferenced_packs,
        s.packs_keep
    );
    let remaining = s.remaining_size.max(1);
    println!(
        "{:<22}{} ({:.2}% of what remains)",
        "unused after prune:",
        bytes(s.unused_after),
        s.unused_after as f64 * 100.0 / remaining as f64
    );
    println!("{:<22}{}", "remaining:", bytes(s.remaining_size));
}
