//! Assembles blobs into a pack file.

use crate::format::crypto::Key;
use crate::format::id::Id;
use crate::format::repofile::pack::{header_to_bytes, PackHeaderEntry};
use crate::format::repofile::BlobType;

/// A pack being filled with blobs of one type.
#[derive(Debug)]
pub struct Packer {
    tpe: BlobType,
    buf: Vec<u8>,
    entries: Vec<PackHeaderEntry>,
}

/// A finished pack: its id, bytes and header entries.
#[derive(Debug)]
pub struct FinishedPack {
    /// SHA-256 of `bytes`.
    pub id: Id,
    /// The whole pack file.
    pub bytes: Vec<u8>,
    /// Its blobs, with offsets.
    pub entries: Vec<PackHeaderEntry>,
}

impl Packer {
    /// An empty pack for blobs of `tpe`.
    pub fn new(tpe: BlobType) -> Self {
        Self::with_capacity(tpe, 0)
    }

    /// An empty pack with room for `bytes` of blobs, so that filling it
    /// never moves what is already there.
    pub fn with_capacity(tpe: BlobType, bytes: usize) -> Self {
        Self::with_buffer(tpe, Vec::with_capacity(bytes))
    }

    /// An empty pack filling `buf` (cleared first), to reuse the memory of
    /// a pack already uploaded.
    pub fn with_buffer(tpe: BlobType, mut buf: Vec<u8>) -> Self {
        buf.clear();
        Packer {
            tpe,
            buf,
            entries: Vec::new(),
        }
    }

    /// The blob type.
    pub fn blob_type(&self) -> BlobType {
        self.tpe
    }

    /// Appends an encrypted blob.
    pub fn add(&mut self, id: Id, encrypted: &[u8], uncompressed_length: Option<u32>) {
        let offset = self.buf.len() as u32;
        if self.buf.capacity() - self.buf.len() < encrypted.len() {
            // Grow by what is needed, not by doubling: packs are large.
            self.buf.reserve_exact(encrypted.len());
        }
        self.buf.extend_from_slice(encrypted);
        self.entries.push(PackHeaderEntry {
            tpe: self.tpe,
            length: encrypted.len() as u32,
            uncompressed_length,
            id,
            offset,
        });
    }

    /// Bytes of blobs so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Number of blobs so far.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Appends the encrypted header and its length and names the pack.
    pub fn finish(mut self, key: &Key) -> FinishedPack {
        let header = header_to_bytes(&self.entries);
        let before = self.buf.len();
        key.encrypt_into(&header, &mut self.buf);
        let hlen = (self.buf.len() - before) as u32;
        self.buf.extend_from_slice(&hlen.to_le_bytes());
        FinishedPack {
            id: Id::hash(&self.buf),
            bytes: self.buf,
            entries: self.entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::repofile::pack::{header_from_bytes, split_pack};

    #[test]
    fn finished_pack_parses_back() {
        let key = Key::random();
        let mut p = Packer::new(BlobType::Data);
        let blobs: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![7u8; 1000], vec![]];
        for b in &blobs {
            p.add(Id::hash(b), &key.encrypt(b), None);
        }
        let f = p.finish(&key);
        assert_eq!(f.id, Id::hash(&f.bytes));
        let (blob_area, hdr) = split_pack(&f.bytes, &f.id).unwrap();
        let entries = header_from_bytes(&key.decrypt(hdr, &|| "h".into()).unwrap(), &f.id).unwrap();
        assert_eq!(entries, f.entries);
        for (e, b) in entries.iter().zip(&blobs) {
            let ct = &blob_area[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&key.decrypt(ct, &|| "b".into()).unwrap(), b);
        }
    }
}
