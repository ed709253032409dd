//! Lock files (`locks/<id>`).

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The JSON of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockFile {
    /// When the lock was created or last refreshed.
    #[serde(with = "crate::format::repofile::gotime")]
    pub time: DateTime<FixedOffset>,
    /// Exclusive (prune, forget) or not (backup, restore, check).
    pub exclusive: bool,
    /// Host of the holder.
    #[serde(default)]
    pub hostname: String,
    /// User of the holder.
    #[serde(default)]
    pub username: String,
    /// Process id of the holder.
    #[serde(default)]
    pub pid: i64,
    /// User id of the holder.
    #[serde(default)]
    pub uid: u32,
    /// Group id of the holder.
    #[serde(default)]
    pub gid: u32,
}

/// A lock not refreshed for this long is stale (restic's rule).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::minutes(30);

impl LockFile {
    /// Parses the decrypted JSON.
    pub fn from_json(data: &[u8], name: &str) -> Result<LockFile> {
        serde_json::from_slice(data).map_err(|source| Error::Json {
            what: format!("lock {name}"),
            source,
        })
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lock json")
    }

    /// Whether the lock is stale at `now`: too old, or held by a process of
    /// this host (`this_host`) that no longer exists (`pid_alive`).
    pub fn is_stale(
        &self,
        now: DateTime<FixedOffset>,
        this_host: &str,
        pid_alive: impl Fn(i64) -> bool,
    ) -> bool {
        if now.signed_duration_since(self.time) > STALE_AFTER {
            return true;
        }
        self.hostname == this_host && !pid_alive(self.pid)
    }

    /// "user@host (pid N), exclusive, since TIME".
    pub fn describe(&self) -> String {
        format!(
            "{}@{} (pid {}) since {}",
            self.username,
            self.hostname,
            self.pid,
            crate::format::repofile::gotime::format(&self.time)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_by_age_and_by_dead_pid() {
        let now = chrono::Local::now().fixed_offset();
        let l = LockFile {
            time: now - chrono::Duration::minutes(5),
            exclusive: false,
            hostname: "h".into(),
            username: "u".into(),
            pid: 42,
            uid: 0,
            gid: 0,
        };
        assert!(!l.is_stale(now, "h", |_| true));
        assert!(l.is_stale(now, "h", |_| false));
        assert!(!l.is_stale(now, "other", |_| false));
        let old = LockFile {
            time: now - chrono::Duration::minutes(31),
            ..l.clone()
        };
        assert!(old.is_stale(now, "other", |_| true));
        assert_eq!(LockFile::from_json(&l.to_json(), "x").unwrap(), l);
    }
}
