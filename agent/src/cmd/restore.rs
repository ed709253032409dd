//! `stash restore`.

use anyhow::{Context, Result};
use repo_format::lock::RepoLock;
use repo_format::restorer::{restore, RestoreOptions};

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::{format, repo};

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<u8> {
    let started = std::time::Instant::now();
    let r = repo::open(g)?;
    let _lock = RepoLock::acquire(r.clone(), false)?;
    let (id, s) = r.find_snapshot(&a.snapshot)?;
    r.load_index().context("loading the index")?;
    println!(
        "restoring snapshot {} of [{}] at {} to {}",
        id.short(),
        s.paths.join(" "),
        s.time
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S"),
        a.target.display()
    );
    let res = restore(
        &r,
        &s.tree,
        &RestoreOptions {
            target: a.target.clone(),
            includes: a.includes.clone(),
            excludes: a.excludes.clone(),
        },
    )?;
    for e in &res.errors {
        eprintln!("error: {:?}: {}", e.path, e.message);
    }
    println!(
        "restored {} files, {} directories, {} other entries, {} in {}",
        res.files,
        res.dirs,
        res.others,
        format::bytes(res.bytes),
        format::duration(started.elapsed())
    );
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
