//! Index files: which blobs are in which pack, at which offset.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::repofile::BlobType;

/// The JSON of an index file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files this one replaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    /// Packs and their blobs.
    pub packs: Vec<IndexPack>,
}

/// One pack in an index file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexPack {
    /// Pack id.
    pub id: Id,
    /// Its blobs.
    pub blobs: Vec<IndexBlob>,
}

/// One blob in an index file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexBlob {
    /// Blob id (SHA-256 of the plaintext).
    pub id: Id,
    /// Data or tree.
    #[serde(rename = "type")]
    pub tpe: BlobType,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored length (encrypted).
    pub length: u32,
    /// Plaintext length, for compressed blobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

/// Blobs an index file holds at most before the writer starts another, as
/// restic does (its `indexMaxBlobs`).
pub const INDEX_FILE_MAX_BLOBS: usize = 50_000;

impl From<&super::PackHeaderEntry> for IndexBlob {
    /// A pack header's entry as the index names it.
    fn from(e: &super::PackHeaderEntry) -> IndexBlob {
        IndexBlob {
            id: e.id,
            tpe: e.tpe,
            offset: e.offset,
            length: e.length,
            uncompressed_length: e.uncompressed_length,
        }
    }
}

impl IndexFile {
    /// Parses the decrypted (and decompressed) JSON. Also reads the legacy
    /// format (a bare array of packs) of very old repositories.
    pub fn from_json(data: &[u8], name: &str) -> Result<IndexFile> {
        let what = || format!("index file {name}");
        if data.first() == Some(&b'[') {
            let packs: Vec<IndexPack> =
                serde_json::from_slice(data).map_err(|source| Error::Json {
                    what: what(),
                    source,
                })?;
            return Ok(IndexFile {
                supersedes: vec![],
                packs,
            });
        }
        serde_json::from_slice(data).map_err(|source| Error::Json {
            what: what(),
            source,
        })
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("index json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_index_json() {
        let j = br#"{"packs":[{"id":"73d04e6125cf3c28a299cc2f3cca3b78ceac396e4fcf9575e34536b26782413c","blobs":[{"id":"3ec79977ef0cf5de7b08cd12b874cd0f62bbaf7f07f3497a5b1bbcc8cb39b1ce","type":"data","offset":0,"length":38,"uncompressed_length":100},{"id":"9ccb846e60d90d4eb915848add7aa7ea1e4bbabfc60e573db9f7bfb2789afbae","type":"tree","offset":38,"length":112}]}]}"#;
        let idx = IndexFile::from_json(j, "x").unwrap();
        assert_eq!(idx.packs[0].blobs[0].uncompressed_length, Some(100));
        assert_eq!(idx.packs[0].blobs[1].tpe, BlobType::Tree);
        let back = IndexFile::from_json(&idx.to_json(), "x").unwrap();
        assert_eq!(back, idx);
        assert!(!String::from_utf8(idx.to_json())
            .unwrap()
            .contains("supersedes"));
        assert!(IndexFile::from_json(b"{\"packs\": 3}", "x").is_err());
    }
}
