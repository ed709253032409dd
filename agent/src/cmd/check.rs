//! `stash check`.

use anyhow::Result;
use repo_format::checker::{check, CheckOptions};
use repo_format::lock::RepoLock;

use crate::cli::GlobalArgs;
use crate::repo;

pub fn run(g: &GlobalArgs, read_data: bool) -> Result<u8> {
    let r = repo::open(g)?;
    let _lock = RepoLock::acquire(r.clone(), false)?;
    println!(
        "checking index, packs, snapshots and trees{}",
        if read_data {
            ", and reading all data"
        } else {
            ""
        }
    );
    let rep = check(&r, CheckOptions { read_data })?;
    for w in &rep.warnings {
        println!("warning: {w}");
    }
    for e in &rep.errors {
        println!("error: {e}");
    }
    println!(
        "checked {} snapshots, {} trees{}",
        rep.snapshots,
        rep.trees,
        if read_data {
            format!(", {} packs read", rep.packs_read)
        } else {
            String::new()
        }
    );
    if rep.is_ok() {
        println!("no errors were found");
        Ok(0)
    } else {
        eprintln!("Fatal: repository contains {} error(s)", rep.errors.len());
        Ok(1)
    }
}
