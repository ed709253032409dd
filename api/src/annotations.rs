//! Pod annotations for the per-volume workflow.
//!
//! A pod opts volumes in with [`BACKUP_VOLUMES`] (`stash.rs/backup-volumes:
//! data,logs`) and out with [`BACKUP_VOLUMES_EXCLUDES`]; a BackupConfiguration
//! that does not list volumes backs up exactly the opted-in ones.
//! [`BACKUP_SCHEDULE`] with [`BACKUP_REPOSITORY`] asks the controller for a
//! BackupConfiguration without writing one (auto-backup).

use std::collections::BTreeMap;

/// Comma-separated names of the pod volumes to back up.
pub const BACKUP_VOLUMES: &str = "stash.rs/backup-volumes";
/// Comma-separated names of pod volumes never to back up.
pub const BACKUP_VOLUMES_EXCLUDES: &str = "stash.rs/backup-volumes-excludes";
/// A cron schedule: the pod gets an automatic BackupConfiguration.
pub const BACKUP_SCHEDULE: &str = "stash.rs/backup-schedule";
/// The Repository (`name` or `namespace/name`) for the automatic BackupConfiguration.
pub const BACKUP_REPOSITORY: &str = "stash.rs/backup-repository";

/// The names in a comma-separated annotation value; blanks are dropped.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The volumes a pod opts in to backup, less those it opts out of, in the
/// order the annotation lists them (duplicates dropped).
pub fn opted_in_volumes(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    let Some(annotations) = annotations else {
        return Vec::new();
    };
    let excluded: Vec<&str> = annotations
        .get(BACKUP_VOLUMES_EXCLUDES)
        .map(|v| split_list(v).collect())
        .unwrap_or_default();
    let mut volumes: Vec<String> = Vec::new();
    for name in annotations
        .get(BACKUP_VOLUMES)
        .map(|v| split_list(v))
        .into_iter()
        .flatten()
    {
        if !excluded.contains(&name) && !volumes.iter().any(|v| v == name) {
            volumes.push(name.to_owned());
        }
    }
    volumes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn opt_in_less_opt_out() {
        let a = annotations(&[
            (BACKUP_VOLUMES, " data, logs,,cache ,data"),
            (BACKUP_VOLUMES_EXCLUDES, "cache"),
        ]);
        assert_eq!(opted_in_volumes(Some(&a)), ["data", "logs"]);
    }

    #[test]
    fn nothing_opted_in() {
        assert!(opted_in_volumes(None).is_empty());
        let a = annotations(&[(BACKUP_VOLUMES_EXCLUDES, "x")]);
        assert!(opted_in_volumes(Some(&a)).is_empty());
    }
}
