//! `stash repair index`.

use anyhow::{Context, Result};
use repo_format::ops::repair::repair_index;
use repo_format::repository::lock::RepoLock;

use crate::cli::{GlobalArgs, RepairCommand};
use crate::repo;

pub fn run(g: &GlobalArgs, c: &RepairCommand) -> Result<u8> {
    let r = repo::open(g)?;
    let _lock = RepoLock::acquire(r.clone(), true).context("repair needs an exclusive lock")?;
    match c {
        RepairCommand::Index { read_all_packs } => {
            let s = repair_index(&r, *read_all_packs)?;
            if s.index_files_damaged > 0 {
                println!("{} damaged index file(s) ignored", s.index_files_damaged);
            }
            println!(
                "{} packs from the old index, {} pack headers read, {} missing packs dropped",
                s.packs_from_index, s.packs_read, s.packs_missing
            );
            for p in &s.packs_unreadable {
                println!("warning: {p}; the pack was left in place");
            }
            println!(
                "wrote {} new index files, removed {} old ones",
                s.index_files_written, s.index_files_deleted
            );
            Ok(if s.packs_unreadable.is_empty() { 0 } else { 3 })
        }
    }
}
