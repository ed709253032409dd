//! `stash check`.

use anyhow::{Context, Result};
use repo_format::ops::check::{check, CheckOptions};
use repo_format::repository::lock::RepoLock;

use crate::cli::{CheckArgs, GlobalArgs};
use crate::repo;

pub fn run(g: &GlobalArgs, a: &CheckArgs) -> Result<u8> {
    let r = repo::open(g)?;
    let _lock = RepoLock::acquire(r.clone(), false).context("check needs a (shared) lock")?;
    let reading = if a.read_data {
        ", and reading all data".to_string()
    } else if let Some(s) = &a.read_data_subset {
        format!(", and reading the data subset {s}")
    } else {
        String::new()
    };
    println!("checking index, packs, snapshots and trees{reading}");
    let rep = check(
        &r,
        CheckOptions {
            read_data: a.read_data,
            subset: a.read_data_subset,
        },
    )?;
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
        if reading.is_empty() {
            String::new()
        } else {
            format!(", {} packs read", rep.packs_read)
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
