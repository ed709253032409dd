//! `stash copy`: snapshots from another repository into this one (see
//! `repo_format::ops::copy`).

use anyhow::{Context, Result};
use repo_format::ops::copy::{copy, CopyEvent};
use repo_format::repository::lock::RepoLock;
use repo_format::{Id, Repository, Snapshot};

use crate::cli::{CopyArgs, GlobalArgs};
use crate::repo;

/// The source password: --from-password-file, then STASH_FROM_PASSWORD_FILE,
/// RESTIC_FROM_PASSWORD_FILE, RESTIC_FROM_PASSWORD, else the destination's.
fn from_password(g: &GlobalArgs, a: &CopyArgs) -> Result<Vec<u8>> {
    if let Some(p) = &a.from_password_file {
        return repo::password_from_file(p);
    }
    for var in ["STASH_FROM_PASSWORD_FILE", "RESTIC_FROM_PASSWORD_FILE"] {
        if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return repo::password_from_file(std::path::Path::new(&p));
        }
    }
    if let Some(p) = std::env::var("RESTIC_FROM_PASSWORD")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return Ok(p.into_bytes());
    }
    repo::password(g)
}

pub fn run(g: &GlobalArgs, a: &CopyArgs) -> Result<u8> {
    let dst = repo::open(g)?;
    let sb = repo::backend_for(g, &a.from_repo)?;
    let src = Repository::open(sb.clone(), &from_password(g, a)?)
        .with_context(|| format!("opening source repository {}", sb.location()))?;
    let src = std::sync::Arc::new(src);
    let _src_lock = RepoLock::acquire(src.clone(), false)
        .context("copy needs a (shared) lock on the source")?;
    let _dst_lock = RepoLock::acquire(dst.clone(), false)
        .context("copy needs a (shared) lock on the destination")?;
    let selected: Vec<(Id, Snapshot)> = if a.snapshots.is_empty() {
        src.snapshots()?
    } else {
        let mut v = Vec::new();
        for s in &a.snapshots {
            let found = src
                .find_snapshot(s)
                .with_context(|| format!("snapshot {s:?} in the source repository"))?;
            if !v.iter().any(|(id, _): &(Id, Snapshot)| *id == found.0) {
                v.push(found);
            }
        }
        v
    };
    src.load_index().context("loading the source index")?;
    dst.load_index().context("loading the destination index")?;
    let stats = copy(&src, &dst, &selected, |e| match e {
        CopyEvent::Skipped { source, existing } => println!(
            "skipping snapshot {}: already copied to snapshot {}",
            source.short(),
            existing.short()
        ),
        CopyEvent::Copied { source, new } => {
            println!(
                "snapshot {} copied to snapshot {}",
                source.short(),
                new.short()
            )
        }
    })?;
    println!(
        "copied {} snapshots ({} skipped), {} blobs, {}",
        stats.snapshots_copied,
        stats.snapshots_skipped,
        stats.blobs_copied,
        crate::format::bytes(stats.bytes_copied)
    );
    Ok(0)
}
