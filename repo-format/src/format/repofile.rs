//! The files of a repository, each as plain data with `from_*`/`to_*`
//! conversions. No I/O happens here.

pub mod config;
pub mod index;
pub mod key;
pub mod lock;
pub mod pack;
pub mod snapshot;
pub mod tree;

pub use config::Config;
pub use index::{IndexBlob, IndexFile, IndexPack};
pub use key::KeyFile;
pub use lock::LockFile;
pub use pack::{BlobType, PackHeaderEntry};
pub use snapshot::{Snapshot, SnapshotSummary};
pub use tree::{ExtendedAttribute, Node, NodeType, Tree};

/// The kinds of files in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// The `config` file.
    Config,
    /// `keys/`.
    Key,
    /// `locks/`.
    Lock,
    /// `snapshots/`.
    Snapshot,
    /// `index/`.
    Index,
    /// `data/` (packs).
    Pack,
}

impl FileType {
    /// The directory restic uses (or the file name for the config).
    pub fn dirname(self) -> &'static str {
        match self {
            FileType::Config => "config",
            FileType::Key => "keys",
            FileType::Lock => "locks",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
        }
    }

    /// All kinds that are directories.
    pub const DIRS: [FileType; 5] = [
        FileType::Key,
        FileType::Lock,
        FileType::Snapshot,
        FileType::Index,
        FileType::Pack,
    ];
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileType::Config => "config",
            FileType::Key => "key",
            FileType::Lock => "lock",
            FileType::Snapshot => "snapshot",
            FileType::Index => "index",
            FileType::Pack => "pack",
        })
    }
}

/// Serde helper: bytes as standard base64 (Go's `[]byte` JSON encoding).
pub(crate) mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <Option<String>>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }

    /// The same for an optional field.
    pub mod opt {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s = <Option<String>>::deserialize(d)?;
            s.map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

/// Serde helper for Go `time.Time`: RFC 3339 with nanoseconds and the local
/// offset. Go writes the zero time as `0001-01-01T00:00:00Z`.
pub mod gotime {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Go's zero time.
    pub fn zero() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z").expect("valid")
    }

    /// Formats like Go's `time.RFC3339Nano` (trailing zeros of the fraction dropped).
    pub fn format(t: &DateTime<FixedOffset>) -> String {
        let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
        // "2006-01-02T15:04:05.123456789+07:00": trim zeros of the fraction.
        if let Some(dot) = s.find('.') {
            let end = s[dot..]
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .map(|e| dot + e)
                .unwrap_or(s.len());
            let frac = s[dot + 1..end].trim_end_matches('0');
            if frac.is_empty() {
                format!("{}{}", &s[..dot], &s[end..])
            } else {
                format!("{}.{}{}", &s[..dot], frac, &s[end..])
            }
        } else {
            s
        }
    }

    pub fn serialize<S: Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let s = <Option<String>>::deserialize(d)?;
        match s {
            None => Ok(zero()),
            Some(s) => DateTime::parse_from_rfc3339(&s).map_err(serde::de::Error::custom),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn formats_like_go_rfc3339nano() {
            for s in [
                "2024-01-02T03:04:05.123456789+01:00",
                "2024-01-02T03:04:05.1+01:00",
                "2024-01-02T03:04:05Z",
                "2024-01-02T03:04:05.00012-07:30",
                "0001-01-01T00:00:00Z",
            ] {
                assert_eq!(format(&DateTime::parse_from_rfc3339(s).unwrap()), s);
            }
        }
    }
}
