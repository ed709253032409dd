//! `repair index`: rebuild the index from the pack files, for when index
//! files are lost or damaged.
//!
//! Index files that still load are trusted for the packs they name if the
//! pack exists with the size they imply (unless every header is to be
//! read); every other pack's header is read from the end of the pack file.
//! New index files are written before any old one is deleted, so an
//! interrupted repair leaves the old and some new index files, which name
//! the same packs: harmless, and the next repair or prune tidies up. Packs
//! whose header cannot be read are reported and left alone: they may hold
//! the only copy of something, and a person should decide.
//!
//! The caller holds an exclusive lock.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::crypto::OVERHEAD;
use crate::format::id::Id;
use crate::format::repofile::index::INDEX_FILE_MAX_BLOBS;
use crate::format::repofile::pack::header_from_bytes;
use crate::format::repofile::{IndexBlob, IndexFile, IndexPack, PackHeaderEntry};
use crate::repository::lock::RepoLock;
use crate::repository::Repository;

/// What a repair did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairIndexStats {
    /// Index files that loaded.
    pub index_files_ok: u64,
    /// Index files that did not (deleted after the rebuild).
    pub index_files_damaged: u64,
    /// Packs taken from the old index.
    pub packs_from_index: u64,
    /// Packs whose header was read.
    pub packs_read: u64,
    /// Packs the old index named that do not exist (dropped).
    pub packs_missing: u64,
    /// Packs whose header could not be read, with the reason (left alone).
    pub packs_unreadable: Vec<String>,
    /// Index files written.
    pub index_files_written: u64,
    /// Old index files deleted.
    pub index_files_deleted: u64,
}

/// Size of a pack file holding these header entries.
fn pack_size(blobs: &[IndexBlob]) -> u64 {
    blobs
        .iter()
        .map(|b| {
            u64::from(b.length)
                + if b.uncompressed_length.is_some() {
                    41
                } else {
                    37
                }
        })
        .sum::<u64>()
        + OVERHEAD as u64
        + 4
}

/// Reads and decrypts a pack's header from the end of the file (`size`
/// bytes long): one request in the common case, two for large headers.
pub fn read_pack_header(repo: &Repository, pack: &Id, size: u64) -> Result<Vec<PackHeaderEntry>> {
    let name = pack.to_hex();
    let what = || format!("pack {pack}");
    if size < (OVERHEAD + 4) as u64 {
        return Err(Error::format(
            what(),
            format!("only {size} bytes: too short for a pack"),
        ));
    }
    let guess = size.min(64 << 10);
    let mut tail = repo
        .backend()
        .read_range(FileType::Pack, &name, size - guess, guess as u32)?;
    let n = tail.len();
    if n < 4 {
        return Err(Error::format(what(), "short read of the header length"));
    }
    let hlen = u64::from(u32::from_le_bytes(tail[n - 4..].try_into().expect("4")));
    if hlen + 4 > size || hlen < OVERHEAD as u64 {
        return Err(Error::format(
            what(),
            format!("header length {hlen} does not fit in a pack of {size} bytes (truncated or damaged)"),
        ));
    }
    if hlen + 4 > guess {
        tail =
            repo.backend()
                .read_range(FileType::Pack, &name, size - hlen - 4, (hlen + 4) as u32)?;
    }
    let n = tail.len();
    let hdr = &tail[n - 4 - hlen as usize..n - 4];
    let plain = repo.key().decrypt(hdr, &|| format!("pack {pack} header"))?;
    let entries = header_from_bytes(&plain, pack)?;
    let data: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
    if data + hlen + 4 != size {
        return Err(Error::format(
            what(),
            format!(
                "the header lists {data} bytes of blobs, the file holds {} (damaged)",
                size - hlen - 4
            ),
        ));
    }
    Ok(entries)
}

/// What [`index_orphan_packs`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OrphanPacks {
    /// Packs no index file named, now indexed.
    pub packs: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Packs whose header could not be read, with the reason (left alone).
    pub unreadable: Vec<String>,
}

/// Indexes the packs that no index file names: what an interrupted
/// operation (a killed backup) uploaded before it could write its index.
/// A backup that calls this after the load of the index reuses that data
/// instead of uploading it again; restic would upload it again, and leave
/// the orphans for prune.
///
/// Only call it when no other process can be writing: a live writer's
/// packs are orphans until its own index file comes, and indexing them here
/// too would name them twice (harmless, but restic check reports it). The
/// backup calls it when its lock removed a stale lock and no other live
/// lock was held. The in-memory index must be loaded.
pub fn index_orphan_packs(repo: &Repository) -> Result<OrphanPacks> {
    let mut out = OrphanPacks::default();
    let named: std::collections::HashSet<Id> = repo.index().packs().iter().copied().collect();
    let mut orphans: Vec<(Id, u64)> = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).map(|id| (id, f.size)))
        .filter(|(id, _)| !named.contains(id))
        .collect();
    orphans.sort();
    let read: Vec<(Id, u64, Result<Vec<PackHeaderEntry>>)> = orphans
        .par_iter()
        .map(|(id, size)| (*id, *size, read_pack_header(repo, id, *size)))
        .collect();
    let mut cur = IndexFile::default();
    let mut blobs = 0usize;
    let save = |f: &IndexFile| -> Result<()> {
        repo.save_unpacked(FileType::Index, &f.to_json())?;
        repo.add_index_file(f);
        Ok(())
    };
    for (id, size, r) in read {
        match r {
            Ok(entries) => {
                out.packs += 1;
                out.bytes += size;
                blobs += entries.len();
                cur.packs.push(IndexPack {
                    id,
                    blobs: entries.iter().map(IndexBlob::from).collect(),
                });
                if blobs >= INDEX_FILE_MAX_BLOBS {
                    save(&std::mem::take(&mut cur))?;
                    blobs = 0;
                }
            }
            Err(e) => {
                tracing::warn!(pack = %id, error = %e, "cannot read the header of a pack no index names; left alone");
                out.unreadable.push(format!("pack {id}: {e}"));
            }
        }
    }
    if !cur.packs.is_empty() {
        save(&cur)?;
    }
    Ok(out)
}

/// For a backup that has just taken `lock` and loaded the index: when
/// taking the lock removed a stale lock (an operation was interrupted) and
/// no other live lock was held, indexes the orphan packs
/// ([`index_orphan_packs`]) so that this backup reuses them. Never fails
/// the backup: an error is logged, and the data is uploaded again.
pub fn reuse_interrupted_uploads(repo: &Repository, lock: &RepoLock) -> Option<OrphanPacks> {
    if lock.stale_removed().is_empty() || lock.others_held() {
        return None;
    }
    match index_orphan_packs(repo) {
        Ok(o) => {
            if o.packs > 0 {
                tracing::info!(
                    packs = o.packs,
                    bytes = o.bytes,
                    "indexed the packs an interrupted operation left: their data is reused"
                );
            }
            Some(o)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not index the packs an interrupted operation left; uploading their data again");
            None
        }
    }
}

/// Rebuilds the index; see the module documentation.
pub fn repair_index(repo: &Repository, read_all_packs: bool) -> Result<RepairIndexStats> {
    let mut stats = RepairIndexStats::default();
    let on_disk: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).map(|id| (id, f.size)))
        .collect();
    let old = repo.list_ids(FileType::Index)?;
    let mut known: HashMap<Id, IndexPack> = HashMap::new();
    if !read_all_packs {
        let loaded: Vec<(Id, Result<IndexFile>)> = old
            .par_iter()
            .map(|id| {
                let name = id.to_hex();
                (
                    *id,
                    repo.load_unpacked(FileType::Index, &name)
                        .and_then(|b| IndexFile::from_json(&b, &name)),
                )
            })
            .collect();
        for (id, f) in loaded {
            match f {
                Ok(f) => {
                    stats.index_files_ok += 1;
                    for p in f.packs {
                        match on_disk.get(&p.id) {
                            None => stats.packs_missing += 1,
                            Some(&size) if size == pack_size(&p.blobs) => {
                                known.entry(p.id).or_insert(p);
                            }
                            // Wrong size: read the header instead.
                            Some(_) => {}
                        }
                    }
                }
                Err(e) => {
                    stats.index_files_damaged += 1;
                    tracing::warn!(index = %id, error = %e, "damaged index file, rebuilding what it named");
                }
            }
        }
    }
    stats.packs_from_index = known.len() as u64;
    let mut to_read: Vec<(Id, u64)> = on_disk
        .iter()
        .filter(|(id, _)| !known.contains_key(*id))
        .map(|(id, s)| (*id, *s))
        .collect();
    to_read.sort();
    let read: Vec<(Id, Result<Vec<PackHeaderEntry>>)> = to_read
        .par_iter()
        .map(|(id, size)| (*id, read_pack_header(repo, id, *size)))
        .collect();
    for (id, r) in read {
        match r {
            Ok(entries) => {
                stats.packs_read += 1;
                let blobs = entries.iter().map(IndexBlob::from).collect();
                known.insert(id, IndexPack { id, blobs });
            }
            Err(e) => stats.packs_unreadable.push(format!("pack {id}: {e}")),
        }
    }
    // Write the new index, then delete the old files.
    let mut packs: Vec<IndexPack> = known.into_values().collect();
    packs.sort_by_key(|p| p.id);
    let mut cur = IndexFile::default();
    let mut blobs = 0usize;
    for p in packs {
        blobs += p.blobs.len();
        cur.packs.push(p);
        if blobs >= INDEX_FILE_MAX_BLOBS {
            repo.save_unpacked(FileType::Index, &std::mem::take(&mut cur).to_json())?;
            stats.index_files_written += 1;
            blobs = 0;
        }
    }
    if !cur.packs.is_empty() {
        repo.save_unpacked(FileType::Index, &cur.to_json())?;
        stats.index_files_written += 1;
    }
    for id in &old {
        match repo.backend().remove(FileType::Index, &id.to_hex()) {
            Ok(()) | Err(Error::NotFound { .. }) => stats.index_files_deleted += 1,
            Err(e) => return Err(e),
        }
    }
    repo.clear_index();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::format::repofile::BlobType;
    use crate::KdfParams;

    /// Packs whose index file is gone (a backup killed before writing it)
    /// are indexed again, and a later save of the same blobs adds nothing.
    #[test]
    fn orphan_packs_are_indexed_and_their_blobs_reused() {
        let d = tempfile::tempdir().unwrap();
        let b: Arc<dyn crate::Backend> = Arc::new(LocalBackend::new(d.path()));
        let r = Repository::init(b.clone(), b"pw", 2, KdfParams::INSECURE_FOR_TESTS).unwrap();
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10_000 + usize::from(i)]).collect();
        for blob in &blobs {
            r.save_blob(BlobType::Data, blob).unwrap();
        }
        r.flush().unwrap();
        for id in r.list_ids(FileType::Index).unwrap() {
            b.remove(FileType::Index, &id.to_hex()).unwrap();
        }
        let packs = r.list_ids(FileType::Pack).unwrap().len() as u64;
        assert!(packs >= 1);

        let r = Repository::open(b.clone(), b"pw").unwrap();
        r.load_index().unwrap();
        assert!(r.index().is_empty());
        let found = index_orphan_packs(&r).unwrap();
        assert_eq!(found.packs, packs);
        assert!(found.unreadable.is_empty(), "{:?}", found.unreadable);
        for blob in &blobs {
            let (_, new) = r.save_blob(BlobType::Data, blob).unwrap();
            assert!(!new, "a blob in an orphan pack was stored again");
        }
        // Written down: a fresh open sees them, and nothing is left over.
        let r = Repository::open(b, b"pw").unwrap();
        r.load_index().unwrap();
        assert_eq!(r.index().count(BlobType::Data), blobs.len());
        assert_eq!(index_orphan_packs(&r).unwrap().packs, 0);
    }
}
