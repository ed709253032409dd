//! `copy`: snapshots from one repository into another, as restic copies
//! them: keys, backends and chunker parameters may differ; blobs keep their
//! ids, so data the destination has is not copied again, and a copied
//! snapshot's tree is the same tree. A copy records the source snapshot's
//! id (or its own `original`) in `original`, and a snapshot is skipped when
//! the destination already has one with the same `original` (or id) that is
//! alike in everything but parent and original (restic's test).
//!
//! Every blob is decrypted with the source key and verified against its id
//! before it is sealed with the destination key. Compressed blobs keep their
//! compressed form when the destination is version 2 (no recompression).
//! The destination's packs and index are flushed before each snapshot file
//! is written, so an interruption leaves at most unreferenced data.
//!
//! The caller loads both indexes and holds shared locks on both
//! repositories (restic does the same).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::repofile::{BlobType, NodeType, Snapshot};
use crate::repository::Repository;

/// What a copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyStats {
    /// Snapshots written to the destination.
    pub snapshots_copied: u64,
    /// Snapshots skipped: already copied.
    pub snapshots_skipped: u64,
    /// Blobs copied.
    pub blobs_copied: u64,
    /// Plaintext bytes of the blobs copied.
    pub bytes_copied: u64,
}

/// What happened to one source snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// Skipped: the destination snapshot `existing` is a copy of it.
    Skipped {
        /// The source snapshot.
        source: Id,
        /// Its copy in the destination.
        existing: Id,
    },
    /// Copied into the new snapshot `new`.
    Copied {
        /// The source snapshot.
        source: Id,
        /// The snapshot written to the destination.
        new: Id,
    },
}

/// restic's `similarSnapshots`: alike in everything but parent and original.
fn similar(a: &Snapshot, b: &Snapshot) -> bool {
    let same_set =
        |x: &[String], y: &[String]| x.len() == y.len() && y.iter().all(|v| x.contains(v));
    a.time == b.time
        && a.tree == b.tree
        && a.hostname == b.hostname
        && a.username == b.username
        && a.uid == b.uid
        && a.gid == b.gid
        && same_set(&a.paths, &b.paths)
        && same_set(&a.tags, &b.tags)
        && a.excludes == b.excludes
}

/// Copies the snapshots `selected` of `src` into `dst`; `report` hears
/// about each one.
pub fn copy(
    src: &Repository,
    dst: &Repository,
    selected: &[(Id, Snapshot)],
    mut report: impl FnMut(&CopyEvent),
) -> Result<CopyStats> {
    let mut by_original: HashMap<Id, Vec<(Id, Snapshot)>> = HashMap::new();
    for (id, s) in dst.snapshots()? {
        if let Some(o) = s.original {
            by_original.entry(o).or_default().push((id, s.clone()));
        }
        by_original.entry(id).or_default().push((id, s));
    }
    let mut stats = CopyStats::default();
    let mut visited: HashSet<Id> = HashSet::new();
    for (id, s) in selected {
        let original = s.original.unwrap_or(*id);
        if let Some((existing, _)) = by_original
            .get(&original)
            .and_then(|v| v.iter().find(|(_, d)| similar(d, s)))
        {
            stats.snapshots_skipped += 1;
            report(&CopyEvent::Skipped {
                source: *id,
                existing: *existing,
            });
            continue;
        }
        copy_tree(src, dst, s.tree, &mut visited, &mut stats).map_err(|e| Error::Refused {
            op: "copy",
            reason: format!("snapshot {}: {e}", id.short()),
        })?;
        dst.flush()?;
        let mut n = s.clone();
        n.parent = None;
        n.original = Some(original);
        let new = dst.save_unpacked(FileType::Snapshot, &n.to_json())?;
        stats.snapshots_copied += 1;
        by_original.entry(original).or_default().push((new, n));
        report(&CopyEvent::Copied { source: *id, new });
    }
    Ok(stats)
}

/// Copies the trees under `root` and their data that `dst` lacks.
fn copy_tree(
    src: &Repository,
    dst: &Repository,
    root: Id,
    visited: &mut HashSet<Id>,
    stats: &mut CopyStats,
) -> Result<()> {
    let mut frontier = vec![root];
    visited.insert(root);
    while !frontier.is_empty() {
        // The trees of one level, loaded in parallel.
        let trees: Vec<(Id, crate::format::repofile::Tree)> = frontier
            .par_iter()
            .map(|id| Ok((*id, src.load_tree(id)?)))
            .collect::<Result<_>>()?;
        let mut next = Vec::new();
        let mut blobs: Vec<(BlobType, Id)> = Vec::new();
        let mut queued: HashSet<Id> = HashSet::new();
        for (id, tree) in &trees {
            if !dst.index().contains(BlobType::Tree, id) {
                blobs.push((BlobType::Tree, *id));
            }
            for node in &tree.nodes {
                if node.node_type == NodeType::Dir {
                    if let Some(st) = node.subtree {
                        if visited.insert(st) {
                            next.push(st);
                        }
                    }
                }
                for b in node.content.iter().flatten() {
                    if !dst.index().contains(BlobType::Data, b) && queued.insert(*b) {
                        blobs.push((BlobType::Data, *b));
                    }
                }
            }
        }
        drop(trees);
        // Sorted by pack and offset: reads go through each pack in order.
        blobs.sort_by_key(|(t, b)| src.blob_location(*t, b).map(|l| (l.pack, l.offset)));
        for chunk in blobs.chunks(256) {
            let copied: Vec<(bool, u64)> = chunk
                .par_iter()
                .map(|(t, b)| copy_blob(src, dst, *t, b))
                .collect::<Result<_>>()?;
            for (new, bytes) in copied {
                if new {
                    stats.blobs_copied += 1;
                    stats.bytes_copied += bytes;
                }
            }
        }
        frontier = next;
    }
    Ok(())
}

/// Copies one blob; returns whether it was new and its plaintext size.
fn copy_blob(src: &Repository, dst: &Repository, tpe: BlobType, id: &Id) -> Result<(bool, u64)> {
    let loc = src
        .blob_location(tpe, id)
        .ok_or(Error::BlobNotFound { tpe, id: *id })?;
    let ct = src.backend().read_range(
        FileType::Pack,
        &loc.pack.to_hex(),
        u64::from(loc.offset),
        loc.length,
    )?;
    let what = || {
        format!(
            "{tpe} blob {id} in pack {} at offset {}",
            loc.pack, loc.offset
        )
    };
    let payload = src.key().decrypt(&ct, &what)?;
    match loc.uncompressed_length {
        Some(u) => {
            crate::repository::check_blob_size(tpe, u, &what)?;
            let plain =
                crate::format::compress::decompress(&payload, u as usize).map_err(|source| {
                    Error::Compression {
                        what: what(),
                        source,
                    }
                })?;
            verify(id, &plain, &loc)?;
            let n = plain.len() as u64;
            if dst.config().version >= 2 {
                let sealed = dst.key().encrypt(&payload);
                Ok((dst.save_sealed_blob(tpe, *id, &sealed, Some(u))?, n))
            } else {
                Ok((dst.save_blob(tpe, &plain)?.1, n))
            }
        }
        None => {
            verify(id, &payload, &loc)?;
            let n = payload.len() as u64;
            Ok((dst.save_blob(tpe, &payload)?.1, n))
        }
    }
}

fn verify(id: &Id, plain: &[u8], loc: &crate::repository::index::BlobLocation) -> Result<()> {
    let actual = Id::hash(plain);
    if actual != *id {
        return Err(Error::BlobHashMismatch {
            id: *id,
            pack: loc.pack,
            actual,
        });
    }
    Ok(())
}
