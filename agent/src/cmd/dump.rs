//! `stash dump`.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context, Result};
use repo_format::ops::dump::{dump_archive, dump_file, lookup};
use repo_format::NodeType;

use crate::cli::{DumpArgs, GlobalArgs};
use crate::repo;

pub fn run(g: &GlobalArgs, a: &DumpArgs) -> Result<u8> {
    if a.target.is_none() && std::io::stdout().is_terminal() {
        bail!("standard output is a terminal: redirect it, or give --target FILE");
    }
    let r = repo::open(g)?;
    let _lock = super::read_lock(g, &r, "dump")?;
    r.load_index().context("loading the index")?;
    let (_, snap) = super::find_snapshot(&r, &a.snapshot)?;
    let (shown, node) = lookup(&r, &snap.tree, &a.path)?;
    let write = |w: &mut dyn Write| -> Result<()> {
        match node.node_type {
            NodeType::Dir => dump_archive(&r, &shown, &node, a.archive, w)?,
            _ => dump_file(&r, &node, w).with_context(|| format!("dumping {shown}"))?,
        }
        w.flush()?;
        Ok(())
    };
    match &a.target {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            write(&mut out)?;
        }
        Some(target) => {
            // Written beside the target and renamed over it once complete:
            // a dump that fails leaves the target as it was.
            let dir = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            let mut tmp = tempfile::Builder::new()
                .prefix(".stash-dump-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
                write(&mut out)?;
            }
            tmp.as_file().sync_all()?;
            tmp.persist(target)
                .with_context(|| format!("writing {}", target.display()))?;
        }
    }
    Ok(0)
}
