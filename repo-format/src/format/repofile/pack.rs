//! Pack files: `blob … blob ‖ encrypted header ‖ u32 LE header length`.
//!
//! Header entries (little-endian): `type u8, length u32, [uncompressed
//! length u32 for types 2 and 3], id [32]`. Offsets are implicit: blobs lie
//! back to back from offset 0 in header order.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::id::Id;

/// Data or tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// File content.
    Data,
    /// A tree (directory listing).
    Tree,
}

impl std::fmt::Display for BlobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        })
    }
}

/// One blob in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeaderEntry {
    /// Data or tree.
    pub tpe: BlobType,
    /// Stored (encrypted, possibly compressed) length.
    pub length: u32,
    /// Plaintext length when the blob is compressed.
    pub uncompressed_length: Option<u32>,
    /// SHA-256 of the plaintext.
    pub id: Id,
    /// Offset in the pack (implicit in the header; computed on parsing).
    pub offset: u32,
}

const ENTRY_LEN: usize = 1 + 4 + 32;
const ENTRY_LEN_COMPRESSED: usize = 1 + 4 + 4 + 32;

/// Serializes the plaintext header for `entries` (in pack order).
pub fn header_to_bytes(entries: &[PackHeaderEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN_COMPRESSED);
    for e in entries {
        let t: u8 = match (e.tpe, e.uncompressed_length.is_some()) {
            (BlobType::Data, false) => 0,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        };
        out.push(t);
        out.extend_from_slice(&e.length.to_le_bytes());
        if let Some(u) = e.uncompressed_length {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out.extend_from_slice(&e.id.0);
    }
    out
}

/// Parses a decrypted header; `pack` names the pack in errors.
pub fn header_from_bytes(data: &[u8], pack: &Id) -> Result<Vec<PackHeaderEntry>> {
    let what = || format!("pack {pack} header");
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut offset = 0u64;
    while pos < data.len() {
        let t = data[pos];
        let (tpe, compressed, len) = match t {
            0 => (BlobType::Data, false, ENTRY_LEN),
            1 => (BlobType::Tree, false, ENTRY_LEN),
            2 => (BlobType::Data, true, ENTRY_LEN_COMPRESSED),
            3 => (BlobType::Tree, true, ENTRY_LEN_COMPRESSED),
            _ => {
                return Err(Error::format(
                    what(),
                    format!("unknown entry type {t} at byte {pos}"),
                ))
            }
        };
        if pos + len > data.len() {
            return Err(Error::format(what(), "truncated entry"));
        }
        let e = &data[pos + 1..pos + len];
        let length = u32::from_le_bytes(e[..4].try_into().expect("4"));
        let (uncompressed_length, idb) = if compressed {
            (
                Some(u32::from_le_bytes(e[4..8].try_into().expect("4"))),
                &e[8..],
            )
        } else {
            (None, &e[4..])
        };
        entries.push(PackHeaderEntry {
            tpe,
            length,
            uncompressed_length,
            id: Id(idb.try_into().expect("32")),
            offset: u32::try_from(offset)
                .map_err(|_| Error::format(what(), "pack larger than 4 GiB"))?,
        });
        offset += u64::from(length);
        pos += len;
    }
    Ok(entries)
}

/// Splits a whole pack into (blob area, encrypted header) using the trailing
/// length field, checking that it fits.
pub fn split_pack<'a>(pack_bytes: &'a [u8], pack: &Id) -> Result<(&'a [u8], &'a [u8])> {
    let what = || format!("pack {pack}");
    if pack_bytes.len() < 4 {
        return Err(Error::format(
            what(),
            "shorter than its header length field (truncated?)",
        ));
    }
    let n = pack_bytes.len();
    let hlen = u32::from_le_bytes(pack_bytes[n - 4..].try_into().expect("4")) as usize;
    if hlen + 4 > n || hlen < crate::format::crypto::OVERHEAD {
        return Err(Error::format(
            what(),
            format!(
                "header length {hlen} does not fit in a pack of {n} bytes (truncated or damaged)"
            ),
        ));
    }
    Ok((
        &pack_bytes[..n - 4 - hlen],
        &pack_bytes[n - 4 - hlen..n - 4],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_all_types() {
        let entries = vec![
            PackHeaderEntry {
                tpe: BlobType::Data,
                length: 100,
                uncompressed_length: None,
                id: Id::hash(b"a"),
                offset: 0,
            },
            PackHeaderEntry {
                tpe: BlobType::Tree,
                length: 50,
                uncompressed_length: None,
                id: Id::hash(b"b"),
                offset: 100,
            },
            PackHeaderEntry {
                tpe: BlobType::Data,
                length: 70,
                uncompressed_length: Some(700),
                id: Id::hash(b"c"),
                offset: 150,
            },
            PackHeaderEntry {
                tpe: BlobType::Tree,
                length: 9,
                uncompressed_length: Some(90),
                id: Id::hash(b"d"),
                offset: 220,
            },
        ];
        let b = header_to_bytes(&entries);
        assert_eq!(b.len(), 2 * 37 + 2 * 41);
        assert_eq!(b[0], 0);
        assert_eq!(b[37], 1);
        assert_eq!(b[74], 2);
        assert_eq!(b[115], 3);
        assert_eq!(header_from_bytes(&b, &Id::default()).unwrap(), entries);
        assert!(header_from_bytes(&b[..b.len() - 1], &Id::default()).is_err());
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(header_from_bytes(&bad, &Id::default()).is_err());
    }
}
