//! Snapshot files.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::id::Id;

/// The JSON of a snapshot file (restic's field names and order).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// When the backup started.
    #[serde(with = "crate::format::repofile::gotime")]
    pub time: DateTime<FixedOffset>,
    /// The snapshot this one was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Root tree.
    pub tree: Id,
    /// The backed-up paths, absolute.
    pub paths: Vec<String>,
    /// Host name (for Stash volumes: the stable volume identity).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// User name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// User id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    /// Group id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
    /// Exclude patterns used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// For copied snapshots: the id of the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// The program that wrote the snapshot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub program_version: String,
    /// Statistics of the backup run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Statistics of a backup run, as restic (0.17+) records them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotSummary {
    /// Start of the run.
    #[serde(with = "crate::format::repofile::gotime")]
    pub backup_start: DateTime<FixedOffset>,
    /// End of the run.
    #[serde(with = "crate::format::repofile::gotime")]
    pub backup_end: DateTime<FixedOffset>,
    /// Files not in the parent.
    pub files_new: u64,
    /// Files changed since the parent.
    pub files_changed: u64,
    /// Files unchanged since the parent.
    pub files_unmodified: u64,
    /// Directories not in the parent.
    pub dirs_new: u64,
    /// Directories changed.
    pub dirs_changed: u64,
    /// Directories unchanged.
    pub dirs_unmodified: u64,
    /// Data blobs added.
    pub data_blobs: u64,
    /// Tree blobs added.
    pub tree_blobs: u64,
    /// Plaintext bytes added.
    pub data_added: u64,
    /// Bytes added after compression and encryption.
    pub data_added_packed: u64,
    /// Files looked at.
    pub total_files_processed: u64,
    /// Bytes looked at.
    pub total_bytes_processed: u64,
}

impl Snapshot {
    /// Parses the decrypted JSON.
    pub fn from_json(data: &[u8], name: &str) -> Result<Snapshot> {
        serde_json::from_slice(data).map_err(|source| Error::Json {
            what: format!("snapshot {name}"),
            source,
        })
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshot json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_snapshot() {
        let j = br#"{"time":"2024-05-01T10:11:12.123456789+02:00","tree":"3ec79977ef0cf5de7b08cd12b874cd0f62bbaf7f07f3497a5b1bbcc8cb39b1ce","paths":["/home/u"],"hostname":"h","username":"u","uid":1000,"gid":1000,"tags":["a"]}"#;
        let s = Snapshot::from_json(j, "x").unwrap();
        assert_eq!(s.paths, vec!["/home/u"]);
        assert_eq!(s.time.timestamp_subsec_nanos(), 123456789);
        let back = Snapshot::from_json(&s.to_json(), "x").unwrap();
        assert_eq!(back, s);
        let text = String::from_utf8(s.to_json()).unwrap();
        assert!(text.starts_with(r#"{"time":"2024-05-01T10:11:12.123456789+02:00","tree":"#));
        assert!(!text.contains("parent"));
    }
}
