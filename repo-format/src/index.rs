//! The in-memory index: where each blob is stored.

use std::collections::HashMap;

use crate::id::Id;
use crate::repofile::{BlobType, IndexFile};

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
            None => u64::from(self.length).saturating_sub(crate::crypto::OVERHEAD as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    pack: u32,
    offset: u32,
    length: u32,
    uncompressed_length: u32, // 0 = not compressed
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

/// Blob id → location, for data and tree blobs. Pack ids are stored once.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    data: HashMap<Id, Entry>,
    tree: HashMap<Id, Entry>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self, tpe: BlobType) -> &HashMap<Id, Entry> {
        match tpe {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }

    /// Adds every blob of an index file. The first location of a blob wins.
    pub fn add_file(&mut self, f: &IndexFile) {
        for (tpe, id, loc) in file_blobs(f) {
            self.add(tpe, id, loc);
        }
    }

    /// Adds one blob.
    pub fn add(&mut self, tpe: BlobType, id: Id, loc: BlobLocation) {
        let next = self.packs.len() as u32;
        let pack = *self.pack_pos.entry(loc.pack).or_insert(next);
        if pack == next {
            self.packs.push(loc.pack);
        }
        let e = Entry {
            pack,
            offset: loc.offset,
            length: loc.length,
            uncompressed_length: loc.uncompressed_length.unwrap_or(0),
        };
        match tpe {
            BlobType::Data => self.data.entry(id).or_insert(e),
            BlobType::Tree => self.tree.entry(id).or_insert(e),
        };
    }

    /// The location of a blob.
    pub fn get(&self, tpe: BlobType, id: &Id) -> Option<BlobLocation> {
        self.map(tpe).get(id).map(|e| BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: e.offset,
            length: e.length,
            uncompressed_length: (e.uncompressed_length != 0).then_some(e.uncompressed_length),
        })
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, tpe: BlobType, id: &Id) -> bool {
        self.map(tpe).contains_key(id)
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.data.len() + self.tree.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every blob: (type, id, location).
    pub fn iter(&self) -> impl Iterator<Item = (BlobType, Id, BlobLocation)> + '_ {
        let f = move |tpe: BlobType| {
            self.map(tpe).iter().map(move |(id, e)| {
                (
                    tpe,
                    *id,
                    BlobLocation {
                        pack: self.packs[e.pack as usize],
                        offset: e.offset,
                        length: e.length,
                        uncompressed_length: (e.uncompressed_length != 0)
                            .then_some(e.uncompressed_length),
                    },
                )
            })
        };
        f(BlobType::Data).chain(f(BlobType::Tree))
    }

    /// Every pack that holds at least one indexed blob.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repofile::{IndexBlob, IndexPack};

    #[test]
    fn add_and_lookup() {
        let pack = Id::hash(b"p");
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: vec![
                    IndexBlob {
                        id: Id::hash(b"a"),
                        tpe: BlobType::Data,
                        offset: 0,
                        length: 42,
                        uncompressed_length: None,
                    },
                    IndexBlob {
                        id: Id::hash(b"b"),
                        tpe: BlobType::Tree,
                        offset: 42,
                        length: 10,
                        uncompressed_length: Some(99),
                    },
                ],
            }],
        };
        let mut idx = Index::new();
        idx.add_file(&f);
        assert_eq!(idx.len(), 2);
        let a = idx.get(BlobType::Data, &Id::hash(b"a")).unwrap();
        assert_eq!(
            (a.pack, a.offset, a.length, a.data_length()),
            (pack, 0, 42, 10)
        );
        assert!(idx.get(BlobType::Tree, &Id::hash(b"a")).is_none());
        assert_eq!(
            idx.get(BlobType::Tree, &Id::hash(b"b"))
                .unwrap()
                .data_length(),
            99
        );
        assert_eq!(idx.packs(), &[pack]);
        assert_eq!(idx.iter().count(), 2);
    }
}
