//! `stash cat`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use repo_format::format::repofile::KeyFile;
use repo_format::{BlobType, FileType};

use crate::cli::GlobalArgs;
use crate::repo;

fn pretty(json: &[u8]) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    Ok(serde_json::to_string_pretty(&v)?)
}

pub fn run(g: &GlobalArgs, what: &str, id: Option<&str>) -> Result<u8> {
    let r = repo::open(g)?;
    let need_id = || id.with_context(|| format!("`stash cat {what}` needs an id"));
    let mut out = std::io::stdout().lock();
    match what {
        "config" => {
            writeln!(out, "{}", pretty(&r.config().to_json())?)?;
        }
        "snapshot" => {
            let (sid, _) = r.find_snapshot(need_id()?)?;
            writeln!(
                out,
                "{}",
                pretty(&r.load_unpacked(FileType::Snapshot, &sid.to_hex())?)?
            )?;
        }
        "index" => {
            let iid = r.find_id(FileType::Index, need_id()?)?;
            writeln!(
                out,
                "{}",
                pretty(&r.load_unpacked(FileType::Index, &iid.to_hex())?)?
            )?;
        }
        "key" => {
            let kid = r.find_id(FileType::Key, need_id()?)?;
            let kf = KeyFile::from_json(
                &r.backend().read(FileType::Key, &kid.to_hex())?,
                &kid.to_hex(),
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(&kf)?)?;
        }
        "lock" => {
            let lid = r.find_id(FileType::Lock, need_id()?)?;
            writeln!(
                out,
                "{}",
                pretty(&r.load_unpacked(FileType::Lock, &lid.to_hex())?)?
            )?;
        }
        "pack" => {
            let pid = r.find_id(FileType::Pack, need_id()?)?;
            let bytes = r.backend().read(FileType::Pack, &pid.to_hex())?;
            let actual = repo_format::Id::hash(&bytes);
            if actual != pid {
                bail!("pack {pid}: content hash is {actual}: the pack is damaged");
            }
            out.write_all(&bytes)?;
        }
        "blob" | "tree" => {
            let bid: repo_format::Id = need_id()?
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))
                .context("blob ids must be given in full")?;
            r.load_index()?;
            let idx_has = |t| r.blob_location(t, &bid).is_some();
            let tpe = if what == "tree" || (!idx_has(BlobType::Data) && idx_has(BlobType::Tree)) {
                BlobType::Tree
            } else {
                BlobType::Data
            };
            let data = r.load_blob(tpe, &bid)?;
            if tpe == BlobType::Tree && what == "tree" {
                writeln!(out, "{}", pretty(&data)?)?;
            } else {
                out.write_all(&data)?;
            }
        }
        other => bail!(
            "cannot cat {other:?}: use config, snapshot, index, key, lock, pack, blob or tree"
        ),
    }
    Ok(0)
}
