//! The in-memory index: where each blob is stored.
//!
//! It must stay small for repositories with hundreds of millions of blobs,
//! so it is not a map of heap objects: each blob is one 40-byte entry in a
//! sorted array (binary search), plus a small hash map of blobs added since
//! the last merge. An entry keeps the first 24 bytes (192 bits) of the blob
//! id: a false match would need a SHA-256 prefix collision, which nobody
//! can produce (2^96 work even for an attacker), and every blob read is
//! verified against the full id anyway. Index files are always written
//! from full ids, never from this structure.

use std::collections::HashMap;

use crate::format::id::Id;
use crate::format::repofile::{BlobType, IndexFile};

/// Where one blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack.
    pub pack: Id,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored length.
    pub length: u32,
    /// Plaintext length if compressed.
    pub uncompressed_length: Option<u32>,
}

impl BlobLocation {
    /// Plaintext length (stored length minus crypto overhead when not compressed).
    pub fn data_length(&self) -> u64 {
        match self.uncompressed_length {
            Some(u) => u64::from(u),
            None => u64::from(self.length).saturating_sub(crate::format::crypto::OVERHEAD as u64),
        }
    }
}

const KEY_LEN: usize = 24;
type Key = [u8; KEY_LEN];

fn key(id: &Id) -> Key {
    id.0[..KEY_LEN].try_into().expect("24 bytes")
}

/// One blob: 40 bytes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    pack: u32,
    offset: u32,
    length: u32,
    /// 0 = not compressed.
    uncompressed_length: u32,
}

/// The blobs of one type.
#[derive(Debug, Default)]
struct Table {
    /// Sorted by key; no duplicate keys.
    sorted: Vec<Entry>,
    /// Added since the last merge.
    recent: HashMap<Key, Entry>,
}

impl Table {
    fn get(&self, k: &Key) -> Option<&Entry> {
        self.sorted
            .binary_search_by(|e| e.key.cmp(k))
            .ok()
            .map(|i| &self.sorted[i])
            .or_else(|| self.recent.get(k))
    }

    fn insert(&mut self, e: Entry) {
        if self.get(&e.key).is_some() {
            return;
        }
        self.recent.insert(e.key, e);
        // Merge once the map holds more than a sixteenth of the array: the
        // map costs more per entry, the merge is amortized O(log n).
        if self.recent.len() > 4096 + self.sorted.len() / 16 {
            self.merge();
        }
    }

    fn merge(&mut self) {
        self.sorted.reserve(self.recent.len());
        self.sorted.extend(self.recent.drain().map(|(_, e)| e));
        self.recent.shrink_to(0);
        // Stable: among equal keys the earlier entry stays first, and wins.
        self.sorted.sort_by_key(|e| e.key);
        self.sorted.dedup_by(|b, a| a.key == b.key);
        self.sorted.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }
}

/// Blob id → location, for data and tree blobs. Pack ids are stored once.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    data: Table,
    tree: Table,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index from index files in one pass (one sort per type).
    /// The first location of a blob wins.
    pub fn from_files<'a>(files: impl IntoIterator<Item = &'a IndexFile>) -> Index {
        let mut idx = Index::new();
        for f in files {
            for (tpe, id, loc) in file_blobs(f) {
                let e = idx.entry(&id, &loc);
                idx.table_mut(tpe).sorted.push(e);
            }
        }
        for t in [&mut idx.data, &mut idx.tree] {
            t.sorted.sort_by_key(|e| e.key);
            t.sorted.dedup_by(|b, a| a.key == b.key);
            t.sorted.shrink_to_fit();
        }
        idx
    }

    fn table(&self, tpe: BlobType) -> &Table {
        match tpe {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }

    fn table_mut(&mut self, tpe: BlobType) -> &mut Table {
        match tpe {
            BlobType::Data => &mut self.data,
            BlobType::Tree => &mut self.tree,
        }
    }

    fn entry(&mut self, id: &Id, loc: &BlobLocation) -> Entry {
        let next = self.packs.len() as u32;
        let pack = *self.pack_pos.entry(loc.pack).or_insert(next);
        if pack == next {
            self.packs.push(loc.pack);
        }
        Entry {
            key: key(id),
            pack,
            offset: loc.offset,
            length: loc.length,
            uncompressed_length: loc.uncompressed_length.unwrap_or(0),
        }
    }

    /// Adds every blob of an index file. The first location of a blob wins.
    pub fn add_file(&mut self, f: &IndexFile) {
        for (tpe, id, loc) in file_blobs(f) {
            self.add(tpe, id, loc);
        }
    }

    /// Adds one blob (ignored if the blob is already indexed).
    pub fn add(&mut self, tpe: BlobType, id: Id, loc: BlobLocation) {
        let e = self.entry(&id, &loc);
        self.table_mut(tpe).insert(e);
    }

    /// The location of a blob.
    pub fn get(&self, tpe: BlobType, id: &Id) -> Option<BlobLocation> {
        self.table(tpe).get(&key(id)).map(|e| BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: e.offset,
            length: e.length,
            uncompressed_length: (e.uncompressed_length != 0).then_some(e.uncompressed_length),
        })
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, tpe: BlobType, id: &Id) -> bool {
        self.table(tpe).get(&key(id)).is_some()
    }

    /// Number of blobs of one type.
    pub fn count(&self, tpe: BlobType) -> usize {
        self.table(tpe).len()
    }

    /// A dense number in `0..count(tpe)` for a blob, so that sets of blobs
    /// can be bitsets (prune marks hundreds of millions of blobs in a few
    /// bits each). Numbers are stable while nothing is added; blobs added
    /// since the last merge have none, so call [`Index::compact`] first
    /// unless the index came from [`Index::from_files`].
    pub fn ordinal(&self, tpe: BlobType, id: &Id) -> Option<usize> {
        let t = self.table(tpe);
        debug_assert!(t.recent.is_empty(), "ordinal on an index not compacted");
        t.sorted.binary_search_by(|e| e.key.cmp(&key(id))).ok()
    }

    /// Merges recently added blobs into the sorted arrays.
    pub fn compact(&mut self) {
        self.data.merge();
        self.tree.merge();
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.data.len() + self.tree.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pack that holds at least one indexed blob.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Bytes of memory held, roughly (for metrics and the memory target).
    pub fn memory_bytes(&self) -> usize {
        let t = |t: &Table| {
            t.sorted.capacity() * std::mem::size_of::<Entry>()
                + t.recent.capacity() * (std::mem::size_of::<Entry>() + KEY_LEN + 8)
        };
        t(&self.data) + t(&self.tree) + self.packs.capacity() * 32 + self.pack_pos.capacity() * 48
    }
}

/// Every blob an index file lists, with its location.
pub fn file_blobs(f: &IndexFile) -> impl Iterator<Item = (BlobType, Id, BlobLocation)> + '_ {
    f.packs.iter().flat_map(|p| {
        p.blobs.iter().map(move |b| {
            (
                b.tpe,
                b.id,
                BlobLocation {
                    pack: p.id,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                },
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::repofile::{IndexBlob, IndexPack};

    fn file(pack: Id, blobs: &[(&[u8], BlobType, u32)]) -> IndexFile {
        IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: blobs
                    .iter()
                    .map(|(b, t, off)| IndexBlob {
                        id: Id::hash(b),
                        tpe: *t,
                        offset: *off,
                        length: 42,
                        uncompressed_length: (*t == BlobType::Tree).then_some(99),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn entries_are_40_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 40);
    }

    #[test]
    fn bulk_and_incremental_agree_and_first_wins() {
        let p1 = Id::hash(b"p1");
        let p2 = Id::hash(b"p2");
        let f1 = file(p1, &[(b"a", BlobType::Data, 0), (b"b", BlobType::Tree, 42)]);
        let f2 = file(p2, &[(b"a", BlobType::Data, 7), (b"c", BlobType::Data, 49)]);
        let bulk = Index::from_files([&f1, &f2]);
        let mut inc = Index::new();
        inc.add_file(&f1);
        inc.add_file(&f2);
        for idx in [&bulk, &inc] {
            assert_eq!(idx.len(), 3);
            let a = idx.get(BlobType::Data, &Id::hash(b"a")).unwrap();
            assert_eq!((a.pack, a.offset, a.data_length()), (p1, 0, 10));
            assert!(idx.get(BlobType::Tree, &Id::hash(b"a")).is_none());
            assert_eq!(
                idx.get(BlobType::Tree, &Id::hash(b"b"))
                    .unwrap()
                    .data_length(),
                99
            );
            assert_eq!(idx.get(BlobType::Data, &Id::hash(b"c")).unwrap().pack, p2);
            assert!(!idx.contains(BlobType::Data, &Id::hash(b"zzz")));
        }
    }

    #[test]
    fn many_additions_merge_and_stay_findable() {
        let mut idx = Index::new();
        let pack = Id::hash(b"pack");
        for i in 0..50_000u32 {
            let loc = BlobLocation {
                pack,
                offset: i,
                length: 1,
                uncompressed_length: None,
            };
            idx.add(BlobType::Data, Id::hash(&i.to_le_bytes()), loc);
        }
        assert_eq!(idx.len(), 50_000);
        assert!(idx.data.sorted.len() > 40_000, "merged into the array");
        for i in (0..50_000u32).step_by(997) {
            assert_eq!(
                idx.get(BlobType::Data, &Id::hash(&i.to_le_bytes()))
                    .unwrap()
                    .offset,
                i
            );
        }
        // Adding again changes nothing (first wins).
        let loc = BlobLocation {
            pack,
            offset: 123_456,
            length: 1,
            uncompressed_length: None,
        };
        idx.add(BlobType::Data, Id::hash(&5u32.to_le_bytes()), loc);
        assert_eq!(
            idx.get(BlobType::Data, &Id::hash(&5u32.to_le_bytes()))
                .unwrap()
                .offset,
            5
        );
        assert!(
            idx.memory_bytes() < 50_000 * 48,
            "{} bytes",
            idx.memory_bytes()
        );
    }

    #[test]
    fn a_loaded_index_costs_40_bytes_per_blob() {
        let pack = Id::hash(b"pack");
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: (0..100_000u32)
                    .map(|i| IndexBlob {
                        id: Id::hash(&i.to_le_bytes()),
                        tpe: BlobType::Data,
                        offset: i,
                        length: 10,
                        uncompressed_length: Some(20),
                    })
                    .collect(),
            }],
        };
        let idx = Index::from_files([&f]);
        let per_blob = idx.memory_bytes() as f64 / 100_000.0;
        assert!(per_blob <= 40.1, "{per_blob} bytes per blob");
    }
}
