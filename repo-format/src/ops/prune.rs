//! `prune`: remove what no snapshot needs, as restic does it.
//!
//! Three steps:
//!
//! 1. [`plan`] reads the index files and walks every snapshot's trees to
//!    mark the blobs still in use (one bit per blob, see
//!    [`Index::ordinal`]), then counts used and unused bytes per pack.
//! 2. [`decide`] is the pure part: restic's rules for which packs go whole
//!    (nothing used), which are repacked (partly used, trees first, then the
//!    emptiest data packs until the unused space left is under
//!    `--max-unused`, never more than `--max-repack-size`), and which stay.
//! 3. [`execute`] carries the plan out in the only order that survives a
//!    crash at any point: delete packs no index names (nothing refers to
//!    them); copy the used blobs of the packs to repack into new packs and
//!    write index files for those; write new index files for every pack that
//!    stays; delete the old index files; and only then delete packs. Killed
//!    anywhere, the repository holds an index that names every pack a
//!    snapshot needs, and at worst some packs no index names, which restic
//!    tolerates and the next prune removes.
//!
//! Tree packs and data packs stay apart: the writer keeps one pack per blob
//! type. Repacked blobs are not compressed and encrypted again: each one is
//! decrypted and verified against its id, and then the stored bytes are
//! copied as they are (restic compresses and encrypts each blob again,
//! most of its repack time). Tree blobs that are stored uncompressed in a
//! version 2 repository are the exception: restic compresses them when it
//! repacks, and so does this.
//!
//! The caller holds an exclusive lock ([`crate::repository::lock::RepoLock`]) for the
//! whole run.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::crypto::OVERHEAD;
use crate::format::id::Id;
use crate::format::repofile::{BlobType, IndexBlob, IndexFile, IndexPack, NodeType};
use crate::repository::index::{BlobLocation, Index};
use crate::repository::writer::{Compression, WriteOptions};
use crate::repository::{open_blob, Repository};

/// How much unused space may stay in the repository (`--max-unused`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// A share of the used size: `p` % of the repository after pruning
    /// may be unused.
    Percent(f64),
    /// An absolute number of bytes.
    Bytes(u64),
    /// Repack only trees and packs that must be; keep all other unused space.
    Unlimited,
}

impl Default for MaxUnused {
    /// restic's default, `5%`.
    fn default() -> Self {
        MaxUnused::Percent(5.0)
    }
}

impl MaxUnused {
    /// The unused bytes tolerated after pruning, given the used bytes:
    /// `p / (100 - p) * used` for a percentage, as restic computes it (p %
    /// of the total that remains).
    pub fn limit(&self, used: u64) -> u64 {
        match *self {
            MaxUnused::Percent(p) => (p / (100.0 - p) * used as f64) as u64,
            MaxUnused::Bytes(b) => b,
            MaxUnused::Unlimited => u64::MAX,
        }
    }
}

impl FromStr for MaxUnused {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "unlimited" {
            return Ok(MaxUnused::Unlimited);
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("--max-unused {s:?}: not a percentage"))?;
            if !(0.0..100.0).contains(&p) {
                return Err(format!(
                    "--max-unused {s:?}: a percentage must be at least 0 and below 100 (or use \"unlimited\")"
                ));
            }
            return Ok(MaxUnused::Percent(p));
        }
        parse_size(s).map(MaxUnused::Bytes).map_err(|e| {
            format!("--max-unused {s:?}: {e}; use a percentage (5%), a size (10G) or \"unlimited\"")
        })
    }
}

/// A size as restic takes it: a number with an optional suffix k, m, g or
/// t (powers of 1024, either case); a bare number is bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("unknown size unit {c:?} (use k, m, g or t)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Settings of a prune run.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Unused space tolerated after the run (default 5 %).
    pub max_unused: MaxUnused,
    /// Repack at most this many bytes (`--max-repack-size`).
    pub max_repack_bytes: Option<u64>,
    /// Repack only tree packs (the ones restic caches); data packs with
    /// unused blobs stay as they are.
    pub repack_cacheable_only: bool,
    /// Repack packs holding uncompressed blobs (version 2), compressing them.
    pub repack_uncompressed: bool,
    /// Size of the new packs.
    pub pack_size: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: MaxUnused::default(),
            max_repack_bytes: None,
            repack_cacheable_only: false,
            repack_uncompressed: false,
            pack_size: WriteOptions::default().pack_size,
        }
    }
}

/// The kind of blobs a pack holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackKind {
    /// Data blobs only.
    Data,
    /// Tree blobs only.
    Tree,
    /// Both (written by old versions; always repacked).
    Mixed,
}

/// What the index says about one pack: the input of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackUsage {
    /// The pack.
    pub id: Id,
    /// What it holds.
    pub kind: PackKind,
    /// Blobs still needed (one copy of each).
    pub used_blobs: u64,
    /// Their stored size, plus the pack header (counted as used, as restic does).
    pub used_size: u64,
    /// Blobs no snapshot needs, or second copies.
    pub unused_blobs: u64,
    /// Their stored size.
    pub unused_size: u64,
    /// Whether any blob is stored uncompressed.
    pub uncompressed: bool,
    /// The pack file's size, if it exists.
    pub size_on_disk: Option<u64>,
}

/// Counts of a prune (planned or done), with restic's categories.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    /// Snapshots whose trees were walked.
    pub snapshots: u64,
    /// Blobs still in use, and their stored bytes.
    pub used_blobs: u64,
    /// Stored bytes of used blobs.
    pub used_size: u64,
    /// Extra copies of used blobs.
    pub duplicate_blobs: u64,
    /// Their stored bytes.
    pub duplicate_size: u64,
    /// Blobs no snapshot needs (extra copies included).
    pub unused_blobs: u64,
    /// Their stored bytes.
    pub unused_size: u64,
    /// Pack files no index names.
    pub unreferenced_packs: u64,
    /// Their size.
    pub unreferenced_size: u64,
    /// Packs with only used blobs.
    pub packs_used: u64,
    /// Packs with used and unused blobs.
    pub packs_partly_used: u64,
    /// Packs with no used blob.
    pub packs_unused: u64,
    /// Packs left as they are.
    pub packs_keep: u64,
    /// Packs to repack.
    pub packs_repack: u64,
    /// Packs deleted whole (no used blob), not counting unreferenced ones.
    pub packs_remove: u64,
    /// Blobs in the packs to repack.
    pub repack_blobs: u64,
    /// Stored bytes of the packs to repack.
    pub repack_size: u64,
    /// Unused blobs dropped while repacking.
    pub repack_removed_blobs: u64,
    /// Their stored bytes.
    pub repack_removed_size: u64,
    /// Blobs in packs deleted whole.
    pub remove_blobs: u64,
    /// Their stored bytes.
    pub remove_size: u64,
    /// Unused bytes left after the run.
    pub unused_after: u64,
    /// Pack bytes left after the run (estimated from the plan).
    pub remaining_size: u64,
    /// Index files written (after execution).
    pub index_files_written: u64,
    /// Index files deleted (after execution).
    pub index_files_deleted: u64,
    /// Pack files deleted (after execution).
    pub packs_deleted: u64,
    /// Pack files written while repacking (after execution).
    pub packs_written: u64,
}

/// The decisions of [`decide`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Packs to delete whole.
    pub remove: Vec<Id>,
    /// Packs whose used blobs move to new packs before they are deleted.
    pub repack: Vec<Id>,
    /// Index entries of packs that are missing but held nothing needed:
    /// dropped from the index.
    pub forget_missing: Vec<Id>,
    /// The counts.
    pub stats: PruneStats,
}

/// restic's pack rules, without I/O. `packs` are the packs the index
/// names; `unindexed` the pack files no index names (they are deleted and
/// only counted here). Fails, as restic does, when a pack that holds used
/// blobs is missing or has another size than its index entries imply.
pub fn decide(
    packs: &[PackUsage],
    unindexed: &[(Id, u64)],
    version: u32,
    opts: &PruneOptions,
) -> Result<Decision> {
    let mut d = Decision::default();
    let st = &mut d.stats;
    for (_, size) in unindexed {
        st.unreferenced_packs += 1;
        st.unreferenced_size += size;
    }
    let mut missing_needed = Vec::new();
    let mut candidates: Vec<&PackUsage> = Vec::new();
    for p in packs {
        st.used_blobs += p.used_blobs;
        st.used_size += p.used_size;
        st.unused_blobs += p.unused_blobs;
        st.unused_size += p.unused_size;
        let needed = p.used_blobs > 0;
        let Some(size) = p.size_on_disk else {
            if needed {
                missing_needed.push(p.id);
            } else {
                d.forget_missing.push(p.id);
                st.remove_blobs += p.unused_blobs;
                st.remove_size += p.unused_size;
            }
            continue;
        };
        if needed && p.used_size + p.unused_size != size {
            return Err(Error::Refused {
                op: "prune",
                reason: format!(
                    "pack {}: the index implies {} bytes, the file has {size}; \
                     run `stash repair index`, then prune again",
                    p.id,
                    p.used_size + p.unused_size
                ),
            });
        }
        match (p.used_blobs, p.unused_blobs) {
            (0, _) => st.packs_unused += 1,
            (_, 0) => st.packs_used += 1,
            _ => st.packs_partly_used += 1,
        }
        let must_compress = version >= 2
            && p.uncompressed
            && (p.kind == PackKind::Tree || opts.repack_uncompressed);
        if !needed {
            d.remove.push(p.id);
            st.remove_blobs += p.unused_blobs;
            st.remove_size += p.unused_size;
        } else if (opts.repack_cacheable_only && p.kind == PackKind::Data)
            || (p.unused_blobs == 0 && p.kind != PackKind::Mixed && !must_compress)
        {
            // Data packs with --repack-cacheable-only, and fully used packs.
            st.packs_keep += 1;
        } else {
            candidates.push(p);
        }
    }
    if !missing_needed.is_empty() {
        missing_needed.sort();
        let list: Vec<String> = missing_needed.iter().map(|p| p.to_string()).collect();
        return Err(Error::Refused {
            op: "prune",
            reason: format!(
                "the index names {} pack(s) holding needed data that are missing from the \
                 repository: {}; nothing was changed (run `stash check`)",
                list.len(),
                list.join(", ")
            ),
        });
    }
    let max_unused_after = opts.max_unused.limit(st.used_size);
    // Trees and mixed packs first, then by unused/used, largest first:
    // a·d > c·b instead of a/b > c/d, in 128 bits.
    candidates.sort_by(|a, b| {
        let a_data = a.kind == PackKind::Data;
        let b_data = b.kind == PackKind::Data;
        a_data.cmp(&b_data).then_with(|| {
            let l = u128::from(a.unused_size) * u128::from(b.used_size);
            let r = u128::from(b.unused_size) * u128::from(a.used_size);
            r.cmp(&l)
        })
    });
    for p in candidates {
        let unused_left = st
            .unused_size
            .saturating_sub(st.remove_size)
            .saturating_sub(st.repack_removed_size);
        let reached_unused = unused_left < max_unused_after;
        let size = p.used_size + p.unused_size;
        let reached_repack = opts
            .max_repack_bytes
            .is_some_and(|max| st.repack_size + size > max);
        let must_compress = version >= 2
            && p.uncompressed
            && (p.kind == PackKind::Tree || opts.repack_uncompressed);
        let repack = if reached_repack {
            false
        } else if p.kind != PackKind::Data || must_compress {
            true
        } else {
            !reached_unused
        };
        if repack {
            d.repack.push(p.id);
            st.repack_blobs += p.used_blobs + p.unused_blobs;
            st.repack_size += size;
            st.repack_removed_blobs += p.unused_blobs;
            st.repack_removed_size += p.unused_size;
        } else {
            st.packs_keep += 1;
        }
    }
    st.packs_repack = d.repack.len() as u64;
    st.packs_remove = d.remove.len() as u64;
    st.unused_after = st
        .unused_size
        .saturating_sub(st.remove_size)
        .saturating_sub(st.repack_removed_size);
    st.remaining_size = (st.used_size + st.unused_size)
        .saturating_sub(st.remove_size)
        .saturating_sub(st.repack_removed_size);
    Ok(d)
}

/// A set of numbers below a bound, one bit each, shared between threads.
#[derive(Debug)]
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits((0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets bit `i`; true if it was not set.
    fn insert(&self, i: usize) -> bool {
        let m = 1u64 << (i % 64);
        self.0[i / 64].fetch_or(m, Ordering::Relaxed) & m == 0
    }

    fn remove(&self, i: usize) -> bool {
        let m = 1u64 << (i % 64);
        self.0[i / 64].fetch_and(!m, Ordering::Relaxed) & m != 0
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64].load(Ordering::Relaxed) & (1u64 << (i % 64)) != 0
    }

    fn copy(&self) -> Bits {
        Bits(
            self.0
                .iter()
                .map(|w| AtomicU64::new(w.load(Ordering::Relaxed)))
                .collect(),
        )
    }
}

/// The blobs in use, one bit per blob of the index.
#[derive(Debug)]
struct Used {
    data: Bits,
    tree: Bits,
}

impl Used {
    fn of(&self, tpe: BlobType) -> &Bits {
        match tpe {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }
}

/// Size of a blob's pack header entry.
fn header_entry_size(b: &IndexBlob) -> u64 {
    if b.uncompressed_length.is_some() {
        41
    } else {
        37
    }
}

/// A planned prune: what [`execute`] will do.
#[derive(Debug)]
pub struct PrunePlan {
    /// The counts.
    pub stats: PruneStats,
    /// Pack files no index names (deleted first).
    pub unindexed: Vec<Id>,
    /// The decisions.
    pub decision: Decision,
    /// Per pack to repack: the blobs to copy out of it (used, and not
    /// already kept elsewhere), by offset.
    copies: Vec<(Id, Vec<IndexBlob>)>,
    /// The index files read; replaced by new ones.
    index_files: Vec<Id>,
}

impl PrunePlan {
    /// Whether running the plan changes anything.
    pub fn is_empty(&self) -> bool {
        self.unindexed.is_empty()
            && self.decision.remove.is_empty()
            && self.decision.repack.is_empty()
            && self.decision.forget_missing.is_empty()
    }
}

/// Where a tree was found, for messages.
struct TreeRef {
    id: Id,
    snapshot: Id,
    path: String,
}

/// Marks every blob reachable from `roots` in `used`; returns the problems
/// (trees or data blobs missing from the index, trees that do not load).
fn mark_used(repo: &Repository, index: &Index, roots: Vec<TreeRef>, used: &Used) -> Vec<String> {
    let mut problems = Vec::new();
    let mut frontier: Vec<TreeRef> = Vec::new();
    for r in roots {
        match index.ordinal(BlobType::Tree, &r.id) {
            Some(o) => {
                if used.tree.insert(o) {
                    frontier.push(r);
                }
            }
            None => problems.push(format!(
                "snapshot {}: root tree {} is not in the index",
                r.snapshot.short(),
                r.id
            )),
        }
    }
    // Level by level, the trees of one level loaded in parallel.
    while !frontier.is_empty() {
        let results: Vec<(Vec<TreeRef>, Vec<String>)> = frontier
            .par_iter()
            .map(|t| {
                let mut next = Vec::new();
                let mut errs = Vec::new();
                let tree = match repo.load_tree(&t.id) {
                    Ok(tree) => tree,
                    Err(e) => {
                        errs.push(format!(
                            "snapshot {}: tree {} for {:?}: {e}",
                            t.snapshot.short(),
                            t.id,
                            t.path
                        ));
                        return (next, errs);
                    }
                };
                for node in &tree.nodes {
                    let path = || {
                        format!(
                            "{}{}{}",
                            t.path,
                            if t.path.ends_with('/') { "" } else { "/" },
                            node.name_lossy()
                        )
                    };
                    if node.node_type == NodeType::Dir {
                        if let Some(st) = node.subtree {
                            match index.ordinal(BlobType::Tree, &st) {
                                Some(o) => {
                                    if used.tree.insert(o) {
                                        next.push(TreeRef {
                                            id: st,
                                            snapshot: t.snapshot,
                                            path: path(),
                                        });
                                    }
                                }
                                None => errs.push(format!(
                                    "snapshot {}: tree {st} for {:?} is not in the index",
                                    t.snapshot.short(),
                                    path()
                                )),
                            }
                        }
                    }
                    for b in node.content.iter().flatten() {
                        match index.ordinal(BlobType::Data, b) {
                            Some(o) => {
                                used.data.insert(o);
                            }
                            None => errs.push(format!(
                                "snapshot {}: file {:?}: data blob {b} is not in the index",
                                t.snapshot.short(),
                                path()
                            )),
                        }
                    }
                }
                (next, errs)
            })
            .collect();
        frontier = Vec::new();
        for (next, errs) in results {
            frontier.extend(next);
            problems.extend(errs);
        }
    }
    problems
}

/// Every pack entry of the index files, each pack once (a pack listed by
/// several index files counts from the first).
fn unique_packs(files: &[(Id, IndexFile)]) -> impl Iterator<Item = &IndexPack> {
    let mut seen: HashSet<Id> = HashSet::new();
    files
        .iter()
        .flat_map(|(_, f)| &f.packs)
        .filter(move |p| seen.insert(p.id))
}

/// Reads the index and the snapshots and plans a prune (nothing is
/// changed: this is `--dry-run`). Loads the repository's in-memory index.
pub fn plan(repo: &Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    plan_without(repo, opts, &[])
}

/// [`plan`] as if the snapshots `ignore` were gone (`forget --dry-run
/// --prune` shows what the prune after the forget would do).
pub fn plan_without(repo: &Repository, opts: &PruneOptions, ignore: &[Id]) -> Result<PrunePlan> {
    let files = repo.load_index_files().map_err(|e| Error::Refused {
        op: "prune",
        reason: format!("the index cannot be read: {e}; run `stash repair index` first"),
    })?;
    let mut snapshots = repo.snapshots()?;
    snapshots.retain(|(id, _)| !ignore.contains(id));
    let index = repo.index();
    let used = Used {
        data: Bits::new(index.count(BlobType::Data)),
        tree: Bits::new(index.count(BlobType::Tree)),
    };
    let roots: Vec<TreeRef> = snapshots
        .iter()
        .map(|(id, s)| TreeRef {
            id: s.tree,
            snapshot: *id,
            path: "/".into(),
        })
        .collect();
    tracing::info!(snapshots = roots.len(), "finding data still in use");
    let problems = mark_used(repo, &index, roots, &used);
    if !problems.is_empty() {
        let n = problems.len();
        let shown: Vec<String> = problems.into_iter().take(10).collect();
        return Err(Error::Refused {
            op: "prune",
            reason: format!(
                "{n} needed object(s) are missing or damaged, pruning could lose more data: {}{}; \
                 run `stash check`",
                shown.join("; "),
                if n > 10 { "; ..." } else { "" }
            ),
        });
    }

    // One copy of each used blob counts as used. Pass 1 finds blobs with
    // more than one copy; they are rare (interrupted or concurrent backups).
    let first = Used {
        data: Bits::new(index.count(BlobType::Data)),
        tree: Bits::new(index.count(BlobType::Tree)),
    };
    let ord = |b: &IndexBlob| index.ordinal(b.tpe, &b.id).expect("indexed");
    let mut duplicates: HashMap<(BlobType, usize), u64> = HashMap::new();
    let mut stats = PruneStats {
        snapshots: snapshots.len() as u64,
        ..PruneStats::default()
    };
    for p in unique_packs(&files) {
        for b in &p.blobs {
            let o = ord(b);
            if used.of(b.tpe).contains(o) && !first.of(b.tpe).insert(o) {
                *duplicates.entry((b.tpe, o)).or_insert(1) += 1;
                stats.duplicate_blobs += 1;
                stats.duplicate_size += u64::from(b.length);
            }
        }
    }
    // Pass 2: usage per pack, duplicates left out.
    let mut usage: Vec<PackUsage> = Vec::new();
    let mut pos: HashMap<Id, usize> = HashMap::new();
    for p in unique_packs(&files) {
        let mut u = PackUsage {
            id: p.id,
            kind: match p.blobs.first().map(|b| b.tpe) {
                Some(BlobType::Tree) => PackKind::Tree,
                _ => PackKind::Data,
            },
            used_blobs: 0,
            used_size: (OVERHEAD + 4) as u64,
            unused_blobs: 0,
            unused_size: 0,
            uncompressed: false,
            size_on_disk: None,
        };
        for b in &p.blobs {
            let o = ord(b);
            let kind = match b.tpe {
                BlobType::Data => PackKind::Data,
                BlobType::Tree => PackKind::Tree,
            };
            if kind != u.kind {
                u.kind = PackKind::Mixed;
            }
            u.uncompressed |= b.uncompressed_length.is_none();
            u.used_size += header_entry_size(b);
            if duplicates.contains_key(&(b.tpe, o)) {
                continue;
            }
            if used.of(b.tpe).contains(o) {
                u.used_blobs += 1;
                u.used_size += u64::from(b.length);
            } else {
                u.unused_blobs += 1;
                u.unused_size += u64::from(b.length);
            }
        }
        pos.insert(p.id, usage.len());
        usage.push(u);
    }
    // Pass 3 (restic's rule): of several copies, keep one in a pack that
    // has other used blobs, else the last one; the others are unused.
    if !duplicates.is_empty() {
        for p in unique_packs(&files) {
            let u = &mut usage[pos[&p.id]];
            for b in &p.blobs {
                let key = (b.tpe, ord(b));
                let Some(count) = duplicates.get_mut(&key) else {
                    continue;
                };
                if *count != 0 && (u.used_blobs > 0 || *count == 1) {
                    u.used_blobs += 1;
                    u.used_size += u64::from(b.length);
                    *count = 0;
                } else {
                    u.unused_blobs += 1;
                    u.unused_size += u64::from(b.length);
                    *count = count.saturating_sub(1);
                }
            }
        }
    }

    let on_disk = repo.backend().list(FileType::Pack)?;
    let mut unindexed = Vec::new();
    for f in &on_disk {
        let Some(id) = Id::from_hex(&f.name) else {
            continue;
        };
        match pos.get(&id) {
            Some(&i) => usage[i].size_on_disk = Some(f.size),
            None => unindexed.push((id, f.size)),
        }
    }
    let decision = decide(&usage, &unindexed, repo.config().version, opts)?;
    stats.used_blobs = decision.stats.used_blobs;
    stats.used_size = decision.stats.used_size;
    stats.unused_blobs = decision.stats.unused_blobs;
    stats.unused_size = decision.stats.unused_size;
    let dstats = decision.stats.clone();
    stats = PruneStats {
        snapshots: stats.snapshots,
        duplicate_blobs: stats.duplicate_blobs,
        duplicate_size: stats.duplicate_size,
        ..dstats
    };

    // The blobs to copy: used ones not in a pack that stays, once each.
    let repack: HashSet<Id> = decision.repack.iter().copied().collect();
    let gone: HashSet<Id> = decision
        .remove
        .iter()
        .chain(&decision.forget_missing)
        .copied()
        .collect();
    let need = Used {
        data: used.data.copy(),
        tree: used.tree.copy(),
    };
    for p in unique_packs(&files) {
        if !repack.contains(&p.id) && !gone.contains(&p.id) {
            for b in &p.blobs {
                need.of(b.tpe).remove(ord(b));
            }
        }
    }
    let mut copies = Vec::new();
    for p in unique_packs(&files) {
        if !repack.contains(&p.id) {
            continue;
        }
        let mut blobs: Vec<IndexBlob> = p
            .blobs
            .iter()
            .filter(|b| need.of(b.tpe).remove(ord(b)))
            .copied()
            .collect();
        blobs.sort_by_key(|b| b.offset);
        copies.push((p.id, blobs));
    }
    drop(index);
    Ok(PrunePlan {
        stats,
        unindexed: unindexed.into_iter().map(|(id, _)| id).collect(),
        decision,
        copies,
        index_files: files.into_iter().map(|(id, _)| id).collect(),
    })
}

/// Deletes files of one type, `connections` at a time; stops at the first
/// failure (what was not deleted stays consistent: see the module docs).
fn delete_all(repo: &Repository, tpe: FileType, ids: &[Id]) -> Result<u64> {
    let next = AtomicUsize::new(0);
    let workers = repo.backend().connections().clamp(1, 32);
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = ids.get(i) else {
                            return Ok(n);
                        };
                        match repo.backend().remove(tpe, &id.to_hex()) {
                            Ok(()) | Err(Error::NotFound { .. }) => n += 1,
                            Err(e) => {
                                next.store(ids.len(), Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("delete thread"))
            .collect()
    });
    results.into_iter().sum()
}

/// Copies the needed blobs of the packs to repack into new packs and
/// writes index files for them.
fn repack(repo: &Repository, plan: &PrunePlan, opts: &PruneOptions) -> Result<u64> {
    let version = repo.config().version;
    let connections = repo.backend().connections().max(1);
    // Each upload slot holds a whole pack: one is enough where requests
    // are cheap (a local directory has 2 connections), a few hide the
    // latency of a remote store.
    let writer = repo.separate_writer(WriteOptions {
        pack_size: opts.pack_size,
        compression: Compression::Auto,
        upload_threads: if connections <= 2 {
            1
        } else {
            connections.min(4)
        },
        ..WriteOptions::default()
    });
    let workers = connections
        .max(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .min(16);
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let copies = &plan.copies;
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((pack, blobs)) = copies.get(i) else {
                            return Ok(());
                        };
                        if let Err(e) = repack_one(repo, &writer, version, opts, pack, blobs) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("repack thread"))
            .collect()
    });
    results.into_iter().collect::<Result<()>>()?;
    writer.flush()?;
    Ok(writer.stats().data_blobs + writer.stats().tree_blobs)
}

/// Largest gap between needed blobs read over rather than skipped.
const MAX_GAP: u64 = 1 << 20;

/// Largest read request (unless one blob is larger): bounds the memory of
/// each repack thread, as the restorer's requests do.
const MAX_READ: u64 = 4 << 20;

fn repack_one(
    repo: &Repository,
    writer: &crate::repository::writer::BlobWriter,
    version: u32,
    opts: &PruneOptions,
    pack: &Id,
    blobs: &[IndexBlob],
) -> Result<()> {
    let name = pack.to_hex();
    // Runs of blobs with small gaps are read in one request each.
    let mut i = 0;
    while i < blobs.len() {
        let start = u64::from(blobs[i].offset);
        let mut end = start + u64::from(blobs[i].length);
        let mut j = i + 1;
        while j < blobs.len()
            && u64::from(blobs[j].offset) <= end + MAX_GAP
            && u64::from(blobs[j].offset) + u64::from(blobs[j].length) - start <= MAX_READ
        {
            end = end.max(u64::from(blobs[j].offset) + u64::from(blobs[j].length));
            j += 1;
        }
        let len = u32::try_from(end - start)
            .map_err(|_| Error::format(format!("pack {pack}"), "blob range larger than 4 GiB"))?;
        let buf = repo
            .backend()
            .read_range(FileType::Pack, &name, start, len)?;
        if buf.len() as u64 != end - start {
            return Err(Error::format(
                format!("pack {pack}"),
                format!(
                    "short read at offset {start}: got {} of {} bytes (truncated pack?)",
                    buf.len(),
                    end - start
                ),
            ));
        }
        for b in &blobs[i..j] {
            let off = (u64::from(b.offset) - start) as usize;
            let ct = &buf[off..off + b.length as usize];
            let loc = BlobLocation {
                pack: *pack,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            };
            // Verify before the old copy can go.
            let plain = open_blob(repo.key(), b.tpe, &b.id, &loc, ct)?;
            let compress = version >= 2
                && b.uncompressed_length.is_none()
                && (b.tpe == BlobType::Tree || opts.repack_uncompressed);
            if compress {
                writer.save(b.tpe, b.id, &plain)?;
            } else {
                writer.save_sealed(b.tpe, b.id, ct, b.uncompressed_length)?;
            }
        }
        i = j;
    }
    Ok(())
}

/// Writes index files naming every pack the old ones name, except
/// `drop`; returns how many were written.
fn rewrite_index(repo: &Repository, old: &[Id], drop: &HashSet<Id>) -> Result<u64> {
    const MAX_BLOBS: usize = crate::format::repofile::index::INDEX_FILE_MAX_BLOBS;
    let mut written = 0u64;
    let mut seen: HashSet<Id> = HashSet::new();
    let mut cur = IndexFile::default();
    let mut cur_blobs = 0usize;
    // Read a few files at a time: bounded memory, some parallelism.
    for chunk in old.chunks(8) {
        let loaded: Vec<IndexFile> = chunk
            .par_iter()
            .map(|id| {
                let name = id.to_hex();
                IndexFile::from_json(&repo.load_unpacked(FileType::Index, &name)?, &name)
            })
            .collect::<Result<_>>()?;
        for f in loaded {
            for p in f.packs {
                if drop.contains(&p.id) || !seen.insert(p.id) {
                    continue;
                }
                cur_blobs += p.blobs.len();
                cur.packs.push(p);
                if cur_blobs >= MAX_BLOBS {
                    repo.save_unpacked(FileType::Index, &std::mem::take(&mut cur).to_json())?;
                    cur_blobs = 0;
                    written += 1;
                }
            }
        }
    }
    if !cur.packs.is_empty() {
        repo.save_unpacked(FileType::Index, &cur.to_json())?;
        written += 1;
    }
    Ok(written)
}

/// Carries out a plan (see the module documentation for the order).
/// Afterwards the repository's in-memory index is empty: load it again to
/// read blobs.
pub fn execute(repo: &Repository, plan: PrunePlan, opts: &PruneOptions) -> Result<PruneStats> {
    let mut stats = plan.stats.clone();
    if plan.is_empty() {
        return Ok(stats);
    }
    // Packs no index names: nothing can refer to them.
    stats.packs_deleted += delete_all(repo, FileType::Pack, &plan.unindexed)?;
    tracing::info!(packs = plan.unindexed.len(), "deleted unreferenced packs");

    if !plan.copies.is_empty() {
        let before = repo.backend().list(FileType::Pack)?.len() as u64;
        let blobs = repack(repo, &plan, opts)?;
        let after = repo.backend().list(FileType::Pack)?.len() as u64;
        stats.packs_written = after.saturating_sub(before);
        tracing::info!(blobs, packs = stats.packs_written, "repacked");
    }
    let mut dropped: HashSet<Id> = plan.decision.remove.iter().copied().collect();
    dropped.extend(&plan.decision.repack);
    dropped.extend(&plan.decision.forget_missing);
    if !dropped.is_empty() {
        stats.index_files_written = rewrite_index(repo, &plan.index_files, &dropped)?;
        stats.index_files_deleted = delete_all(repo, FileType::Index, &plan.index_files)?;
        tracing::info!(
            written = stats.index_files_written,
            deleted = stats.index_files_deleted,
            "replaced the index"
        );
    }
    let packs: Vec<Id> = plan
        .decision
        .remove
        .iter()
        .chain(&plan.decision.repack)
        .copied()
        .collect();
    stats.packs_deleted += delete_all(repo, FileType::Pack, &packs)?;
    repo.clear_index();
    Ok(stats)
}

/// Plans and executes a prune: the entry point for automatic retention
/// (after [`crate::ops::forget`] decided and the snapshots were removed).
/// The caller holds an exclusive [`crate::repository::lock::RepoLock`].
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneStats> {
    let p = plan(repo, opts)?;
    execute(repo, p, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id::hash(&[n])
    }

    fn pack(n: u8, kind: PackKind, used: u64, unused: u64) -> PackUsage {
        PackUsage {
            id: id(n),
            kind,
            used_blobs: used.div_ceil(1000),
            used_size: used,
            unused_blobs: unused.div_ceil(1000),
            unused_size: unused,
            uncompressed: false,
            size_on_disk: Some(used + unused),
        }
    }

    #[test]
    fn max_unused_parses_like_restic() {
        assert_eq!("5%".parse::<MaxUnused>().unwrap(), MaxUnused::Percent(5.0));
        assert_eq!(
            "unlimited".parse::<MaxUnused>().unwrap(),
            MaxUnused::Unlimited
        );
        assert_eq!(
            "10M".parse::<MaxUnused>().unwrap(),
            MaxUnused::Bytes(10 << 20)
        );
        assert_eq!("123".parse::<MaxUnused>().unwrap(), MaxUnused::Bytes(123));
        assert!("100%".parse::<MaxUnused>().is_err());
        assert!("-1%".parse::<MaxUnused>().is_err());
        assert!("5x".parse::<MaxUnused>().is_err());
        // p % of what remains: 5 % of 100 = used 95 → limit 5.
        assert_eq!(MaxUnused::Percent(5.0).limit(95_000), 5_000);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
    }

    #[test]
    fn unused_packs_go_full_packs_stay() {
        let packs = [
            pack(1, PackKind::Data, 5000, 0),
            pack(2, PackKind::Data, 0, 4000),
            pack(3, PackKind::Tree, 0, 1000),
        ];
        let d = decide(&packs, &[(id(9), 77)], 2, &PruneOptions::default()).unwrap();
        assert_eq!(d.remove, vec![id(2), id(3)]);
        assert!(d.repack.is_empty());
        assert_eq!(d.stats.packs_keep, 1);
        assert_eq!(d.stats.unreferenced_size, 77);
        assert_eq!(d.stats.remove_size, 5000);
        assert_eq!(d.stats.unused_after, 0);
    }

    #[test]
    fn repacks_emptiest_data_packs_until_under_max_unused_trees_always() {
        // used 100k, unused 30k in three partly used data packs + a tree pack.
        let packs = [
            pack(1, PackKind::Data, 30_000, 10_000), // 1/3
            pack(2, PackKind::Data, 30_000, 15_000), // 1/2
            pack(3, PackKind::Data, 39_000, 4_000),  // ~0.1
            pack(4, PackKind::Tree, 1_000, 1_000),
        ];
        // 5 %: limit = 5/95 * 100k = 5263; unused 30k.
        let d = decide(&packs, &[], 2, &PruneOptions::default()).unwrap();
        // Tree first; then 2 (ratio 1/2): 30k-1k-15k=14k left; then 1: 4k < 5263 → stop.
        assert_eq!(d.repack, vec![id(4), id(2), id(1)]);
        assert_eq!(d.stats.packs_keep, 1);
        assert_eq!(d.stats.unused_after, 4_000);
        // Unlimited: only the tree pack.
        let o = PruneOptions {
            max_unused: MaxUnused::Unlimited,
            ..PruneOptions::default()
        };
        assert_eq!(decide(&packs, &[], 2, &o).unwrap().repack, vec![id(4)]);
        // Cacheable only: data packs are never candidates.
        let o = PruneOptions {
            max_unused: MaxUnused::Percent(0.0),
            repack_cacheable_only: true,
            ..PruneOptions::default()
        };
        assert_eq!(decide(&packs, &[], 2, &o).unwrap().repack, vec![id(4)]);
        // Max repack size: stops before a pack that would exceed it.
        let o = PruneOptions {
            max_unused: MaxUnused::Percent(0.0),
            max_repack_bytes: Some(50_000),
            ..PruneOptions::default()
        };
        assert_eq!(
            decide(&packs, &[], 2, &o).unwrap().repack,
            vec![id(4), id(2)]
        );
    }

    #[test]
    fn uncompressed_tree_packs_are_repacked_in_v2_only() {
        let mut p = pack(1, PackKind::Tree, 1000, 0);
        p.uncompressed = true;
        let o = PruneOptions::default();
        assert_eq!(decide(&[p], &[], 2, &o).unwrap().repack, vec![id(1)]);
        assert!(decide(&[p], &[], 1, &o).unwrap().repack.is_empty());
    }

    #[test]
    fn missing_or_wrong_sized_needed_packs_refuse() {
        let mut p = pack(1, PackKind::Data, 1000, 10);
        p.size_on_disk = None;
        let e = decide(&[p], &[], 2, &PruneOptions::default()).unwrap_err();
        assert!(e.to_string().contains(&id(1).to_string()), "{e}");
        p.size_on_disk = Some(5);
        let e = decide(&[p], &[], 2, &PruneOptions::default()).unwrap_err();
        assert!(e.to_string().contains("repair index"), "{e}");
        // Missing and unneeded: forgotten from the index.
        let mut q = pack(2, PackKind::Data, 0, 10);
        q.size_on_disk = None;
        let d = decide(&[q], &[], 2, &PruneOptions::default()).unwrap();
        assert_eq!(d.forget_missing, vec![id(2)]);
    }
}
