//! `check`: is the repository consistent, and (with `read_data`) is every
//! byte of it intact?
//!
//! Structure: every index file decrypts and parses; every pack the index
//! names exists with the size the index implies; every snapshot loads; every
//! tree reachable from a snapshot loads and decodes, has safe names, and
//! every blob it refers to is in the index. With `read_data`, every pack is
//! read whole: its hash must match its name, its header must match the
//! index, and every blob must decrypt and hash to its id.
//!
//! Problems are collected, not thrown: a check reports everything it finds.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::crypto::OVERHEAD;
use crate::format::id::Id;
use crate::format::repofile::pack::{header_from_bytes, split_pack};
use crate::format::repofile::{BlobType, IndexFile, Node, NodeType};
use crate::repository::index::{file_blobs, BlobLocation, Index};
use crate::repository::Repository;

/// What to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Read and verify all pack data.
    pub read_data: bool,
    /// Read and verify only some packs (ignored with `read_data`).
    pub subset: Option<Subset>,
}

/// Which packs `--read-data-subset` reads, as restic chooses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// `n/t`: the packs whose id's first byte modulo `t` is `n - 1`, so
    /// that `1/t` … `t/t` on t days read every pack once.
    Group {
        /// Which group, 1-based.
        n: u32,
        /// How many groups.
        t: u32,
    },
    /// `x%`: a random x percent of the packs (at least one).
    Percent(f64),
    /// A size: random packs until their total reaches it.
    Size(u64),
}

impl std::str::FromStr for Subset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Some((n, t)) = s.split_once('/') {
            let (n, t): (u32, u32) = match (n.trim().parse(), t.trim().parse()) {
                (Ok(n), Ok(t)) => (n, t),
                _ => {
                    return Err(format!(
                        "read data subset {s:?}: n/t needs two whole numbers"
                    ))
                }
            };
            if t == 0 || t > 256 || n == 0 || n > t {
                return Err(format!(
                    "read data subset {s:?}: need 1 <= n <= t <= 256 (the group n of t groups)"
                ));
            }
            return Ok(Subset::Group { n, t });
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("read data subset {s:?}: not a percentage"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "read data subset {s:?}: the percentage must be above 0 and at most 100"
                ));
            }
            return Ok(Subset::Percent(p));
        }
        crate::ops::prune::parse_size(s)
            .ok()
            .filter(|b| *b > 0)
            .map(Subset::Size)
            .ok_or_else(|| {
                format!("read data subset {s:?}: use n/t (such as 2/5), x% (such as 10%) or a size (such as 500M)")
            })
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subset::Group { n, t } => write!(f, "{n}/{t}"),
            Subset::Percent(p) => write!(f, "{p}%"),
            Subset::Size(b) => write!(f, "{b} bytes"),
        }
    }
}

impl Subset {
    /// The packs of `all` (id, size) to read.
    pub fn select(&self, all: &[(Id, u64)]) -> Vec<Id> {
        use rand::seq::SliceRandom;
        match *self {
            Subset::Group { n, t } => all
                .iter()
                .filter(|(id, _)| u32::from(id.0[0]) % t == n - 1)
                .map(|(id, _)| *id)
                .collect(),
            Subset::Percent(p) => {
                let mut v: Vec<Id> = all.iter().map(|(id, _)| *id).collect();
                let mut k = (v.len() as f64 * p / 100.0) as usize;
                if k == 0 && !v.is_empty() {
                    k = 1;
                }
                v.shuffle(&mut rand::thread_rng());
                v.truncate(k);
                v.sort();
                v
            }
            Subset::Size(max) => {
                let mut v: Vec<(Id, u64)> = all.to_vec();
                v.shuffle(&mut rand::thread_rng());
                let mut total = 0u64;
                let mut out = Vec::new();
                for (id, size) in v {
                    if total >= max {
                        break;
                    }
                    total += size;
                    out.push(id);
                }
                out.sort();
                out
            }
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Damage: the repository is not healthy.
    pub errors: Vec<String>,
    /// Things worth knowing that do not lose data (e.g. unreferenced packs).
    pub warnings: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees checked.
    pub trees: usize,
    /// Packs read (with `read_data`).
    pub packs_read: usize,
}

impl CheckReport {
    /// Whether no errors were found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks `repo` (its index need not be loaded; the checker reads it itself).
pub fn check(repo: &Repository, opts: CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();

    // 1. Index files.
    let index_ids = repo.list_ids(FileType::Index)?;
    let loaded: Vec<(Id, Result<IndexFile>)> = index_ids
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
    let mut index = Index::new();
    let mut pack_blobs: HashMap<Id, Vec<(BlobType, Id, BlobLocation)>> = HashMap::new();
    for (id, r) in loaded {
        match r {
            Ok(f) => {
                index.add_file(&f);
                for (tpe, id, loc) in file_blobs(&f) {
                    pack_blobs.entry(loc.pack).or_default().push((tpe, id, loc));
                }
            }
            Err(e) => report.errors.push(format!("index file {id}: {e}")),
        }
    }
    // A pack listed in several index files is counted once.
    for blobs in pack_blobs.values_mut() {
        blobs.sort_by_key(|b| (b.2.offset, b.1));
        blobs.dedup_by_key(|b| (b.2.offset, b.1));
    }

    // 2. Packs: present, and of the size the index implies.
    let packs_on_disk: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).map(|id| (id, f.size)))
        .collect();
    let mut pack_ids: Vec<&Id> = pack_blobs.keys().collect();
    pack_ids.sort();
    for pack in &pack_ids {
        let blobs = &pack_blobs[*pack];
        match packs_on_disk.get(*pack) {
            None => report.errors.push(format!(
                "pack {pack}: in the index but missing from the repository ({} blobs lost)",
                blobs.len()
            )),
            Some(&size) => {
                let expected = expected_pack_size(blobs);
                if size != expected {
                    report.errors.push(format!(
                        "pack {pack}: size is {size} bytes, the index implies {expected} (truncated or damaged?)"
                    ));
                }
            }
        }
    }
    let mut unreferenced: Vec<&Id> = packs_on_disk
        .keys()
        .filter(|p| !pack_blobs.contains_key(*p))
        .collect();
    unreferenced.sort();
    for p in unreferenced {
        report
            .warnings
            .push(format!("pack {p}: not referenced by any index file (left by an interrupted run; prune removes it)"));
    }

    // 3. Snapshots and the trees they reach.
    let snapshot_ids = repo.list_ids(FileType::Snapshot)?;
    let mut roots = Vec::new();
    for id in &snapshot_ids {
        match repo.load_snapshot(id) {
            Ok(s) => roots.push((*id, s.tree)),
            Err(e) => report.errors.push(format!("snapshot {id}: {e}")),
        }
    }
    report.snapshots = roots.len();
    let mut seen: HashSet<Id> = HashSet::new();
    for (snap, root) in roots {
        let mut stack: Vec<(Id, String)> = vec![(root, "/".to_string())];
        while let Some((tree_id, path)) = stack.pop() {
            if !seen.insert(tree_id) {
                continue;
            }
            report.trees += 1;
            let Some(loc) = index.get(BlobType::Tree, &tree_id) else {
                report.errors.push(format!(
                    "snapshot {}: tree {tree_id} for {path:?} is not in the index",
                    snap.short()
                ));
                continue;
            };
            let tree = repo
                .backend()
                .read_range(
                    FileType::Pack,
                    &loc.pack.to_hex(),
                    u64::from(loc.offset),
                    loc.length,
                )
                .and_then(|ct| repo.decode_blob(BlobType::Tree, &tree_id, &loc, &ct))
                .and_then(|b| crate::format::repofile::Tree::from_json(&b, &tree_id));
            let tree = match tree {
                Ok(t) => t,
                Err(e) => {
                    report.errors.push(format!(
                        "snapshot {}: tree {tree_id} for {path:?}: {e}",
                        snap.short()
                    ));
                    continue;
                }
            };
            let mut last: Option<&[u8]> = None;
            for node in &tree.nodes {
                let npath = format!(
                    "{}{}{}",
                    path,
                    if path.ends_with('/') { "" } else { "/" },
                    node.name_lossy()
                );
                if let Some(prev) = last {
                    if prev >= node.name.as_slice() {
                        report.errors.push(format!(
                            "snapshot {}: tree {tree_id} for {path:?}: nodes not sorted or duplicated at {npath:?}",
                            snap.short()
                        ));
                    }
                }
                last = Some(&node.name);
                if let Err(why) = Node::check_name(&node.name) {
                    report.errors.push(format!(
                        "snapshot {}: tree {tree_id} for {path:?}: unsafe node name {:?}: {why}",
                        snap.short(),
                        node.name_lossy()
                    ));
                }
                match node.node_type {
                    NodeType::Dir => match node.subtree {
                        Some(st) => stack.push((st, npath)),
                        None => report.errors.push(format!(
                            "snapshot {}: directory {npath:?} has no subtree",
                            snap.short()
                        )),
                    },
                    NodeType::File => match &node.content {
                        None => report.errors.push(format!(
                            "snapshot {}: file {npath:?} has no content list (null)",
                            snap.short()
                        )),
                        Some(content) => {
                            let mut size = 0u64;
                            for (i, b) in content.iter().enumerate() {
                                match index.get(BlobType::Data, b) {
                                    Some(l) => size += l.data_length(),
                                    None => report.errors.push(format!(
                                        "snapshot {}: file {npath:?}: data blob {i} ({b}) is not in the index",
                                        snap.short()
                                    )),
                                }
                            }
                            if content.iter().all(|b| index.contains(BlobType::Data, b))
                                && size != node.size
                            {
                                report.warnings.push(format!(
                                    "snapshot {}: file {npath:?}: size {} differs from its content ({size} bytes)",
                                    snap.short(),
                                    node.size
                                ));
                            }
                        }
                    },
                    _ => {}
                }
            }
        }
    }

    // 4. Every byte of every pack.
    let to_read: Option<HashSet<Id>> = if opts.read_data {
        Some(pack_ids.iter().map(|p| **p).collect())
    } else {
        opts.subset.map(|sub| {
            let all: Vec<(Id, u64)> = pack_ids
                .iter()
                .filter_map(|p| packs_on_disk.get(*p).map(|s| (**p, *s)))
                .collect();
            sub.select(&all).into_iter().collect()
        })
    };
    if let Some(to_read) = to_read {
        let results: Vec<Vec<String>> = pack_ids
            .par_iter()
            .filter(|p| packs_on_disk.contains_key(**p) && to_read.contains(**p))
            .map(|p| read_pack(repo, p, &pack_blobs[*p]))
            .collect();
        report.packs_read = results.len();
        for r in results {
            report.errors.extend(r);
        }
    }
    Ok(report)
}

fn expected_pack_size(blobs: &[(BlobType, Id, BlobLocation)]) -> u64 {
    let data: u64 = blobs.iter().map(|b| u64::from(b.2.length)).sum();
    let header: u64 = blobs
        .iter()
        .map(|b| {
            if b.2.uncompressed_length.is_some() {
                41
            } else {
                37
            }
        })
        .sum();
    data + header + OVERHEAD as u64 + 4
}

/// Reads one pack and verifies everything in it; returns the problems.
fn read_pack(
    repo: &Repository,
    pack: &Id,
    indexed: &[(BlobType, Id, BlobLocation)],
) -> Vec<String> {
    let mut errs = Vec::new();
    let bytes = match repo.backend().read(FileType::Pack, &pack.to_hex()) {
        Ok(b) => b,
        Err(e) => return vec![format!("pack {pack}: {e}")],
    };
    let actual = Id::hash(&bytes);
    if actual != *pack {
        errs.push(format!(
            "pack {pack}: content hash is {actual}: the pack file is damaged"
        ));
    }
    let header = split_pack(&bytes, pack).and_then(|(_, hdr)| {
        let plain = repo.key().decrypt(hdr, &|| format!("pack {pack} header"))?;
        header_from_bytes(&plain, pack)
    });
    let entries = match header {
        Ok(h) => Some(h),
        Err(e) => {
            errs.push(format!(
                "pack {pack}: cannot read header: {e}; checking blobs by the index"
            ));
            None
        }
    };
    if let Some(entries) = &entries {
        let in_header: HashSet<(BlobType, Id, u32, u32)> = entries
            .iter()
            .map(|e| (e.tpe, e.id, e.offset, e.length))
            .collect();
        let in_index: HashSet<(BlobType, Id, u32, u32)> = indexed
            .iter()
            .map(|b| (b.0, b.1, b.2.offset, b.2.length))
            .collect();
        for b in in_index.difference(&in_header) {
            errs.push(format!(
                "pack {pack}: {} blob {} at offset {} (length {}) is in the index but not in the pack header",
                b.0, b.1, b.2, b.3
            ));
        }
        for b in in_header.difference(&in_index) {
            errs.push(format!(
                "pack {pack}: {} blob {} at offset {} is in the pack header but not in the index",
                b.0, b.1, b.2
            ));
        }
    }
    for (tpe, id, loc) in indexed {
        let start = loc.offset as usize;
        let end = start + loc.length as usize;
        let Some(ct) = bytes.get(start..end) else {
            errs.push(format!(
                "pack {pack}: {tpe} blob {id} at offset {start}: beyond the end of the pack"
            ));
            continue;
        };
        if let Err(e) = repo.decode_blob(*tpe, id, loc, ct) {
            let e = match e {
                Error::BlobHashMismatch { actual, .. } => format!("content hash is {actual}"),
                e => e.to_string(),
            };
            errs.push(format!(
                "pack {pack}: {tpe} blob {id} at offset {start}: {e}"
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_select_like_restic() {
        assert_eq!(
            "2/5".parse::<Subset>().unwrap(),
            Subset::Group { n: 2, t: 5 }
        );
        assert_eq!("10%".parse::<Subset>().unwrap(), Subset::Percent(10.0));
        assert_eq!("1k".parse::<Subset>().unwrap(), Subset::Size(1024));
        for bad in ["0/5", "6/5", "1/0", "0%", "101%", "x", "1/257"] {
            assert!(bad.parse::<Subset>().is_err(), "{bad}");
        }
        let packs: Vec<(Id, u64)> = (0..200u32)
            .map(|i| (Id::hash(&i.to_le_bytes()), 100))
            .collect();
        // Groups partition the packs by the first byte of the id.
        let mut all: Vec<Id> = (1..=3)
            .flat_map(|n| Subset::Group { n, t: 3 }.select(&packs))
            .collect();
        all.sort();
        let mut expect: Vec<Id> = packs.iter().map(|p| p.0).collect();
        expect.sort();
        assert_eq!(all, expect);
        assert!(Subset::Group { n: 2, t: 3 }
            .select(&packs)
            .iter()
            .all(|id| id.0[0] % 3 == 1));
        assert_eq!(Subset::Percent(10.0).select(&packs).len(), 20);
        assert_eq!(Subset::Percent(0.1).select(&packs).len(), 1);
        assert_eq!(Subset::Size(1000).select(&packs).len(), 10);
    }
}
