//! `Repository`: a restic-format repository and who may use it.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::check::{CheckPolicy, CheckRun};
use crate::common::SecretKeyReference;

/// A restic-format repository: where it is, how to open it, who may use it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stash.rs",
    version = "v1alpha1",
    kind = "Repository",
    namespaced,
    status = "RepositoryStatus",
    shortname = "repo",
    category = "stash",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Snapshots",
        type_ = "integer",
        json_path = ".status.snapshotCount"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        format = "int64",
        json_path = ".status.totalSize",
        priority = 1
    ),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastBackupTime"
    ),
    printcolumn(
        name = "Check",
        type_ = "string",
        json_path = ".status.lastCheckResult"
    ),
    printcolumn(
        name = "Last Check",
        type_ = "date",
        json_path = ".status.lastCheckTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.adopt) || !has(self.readOnly) || self.readOnly").message("an adopted repository is read-only: remove readOnly: false, or adopt"))]
pub struct RepositorySpec {
    /// Backend URL, as restic writes it: `local:/path` or `/path`,
    /// `s3:host/bucket/prefix`, `gs:bucket:/prefix`, `azure:container:/prefix`,
    /// `rest:https://host/path`.
    #[x_kube(validation = Rule::new("self.matches('^((local|s3|gs|azure|rest|b2|swift|sftp|rclone):.+|/.+)$')").message("url must be a restic backend URL: local:/path, /path, s3:host/bucket/prefix, gs:bucket:/prefix, azure:container:/prefix or rest:https://host/path"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Secret (in this namespace) holding the backend's credentials as
    /// environment variables, e.g. `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The repository password: a key of a Secret in this namespace.
    pub password_secret: SecretKeyReference,
    /// Which namespaces' BackupConfigurations and RestoreSessions may use
    /// this repository; only its own namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_policy: Option<UsagePolicy>,
    /// When the repository is pruned. One maintenance run (forget and
    /// prune) at a time runs per repository URL, across all agents and all
    /// namespaces using it; backups wait for a running prune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Scheduled integrity checks (restic's `check`, optionally reading a
    /// subset of the data), run by an agent under the repository's
    /// maintenance Lease so they never overlap a prune. Results land in
    /// `status.check`, `lastCheckTime` and `lastCheckResult`, in an Event
    /// and in the controller's metrics. The annotation
    /// `stash.rs/check-now: <any new value>` asks for a check at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckPolicy>,
    /// Nothing is ever written: BackupConfigurations naming it are refused,
    /// no retention or prune runs; restores and checks read it with
    /// restic's shared locks only (removed afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// The repository was written by another tool: its snapshots are
    /// mapped to identities as that tool lays them out (see
    /// `deploy/ADOPTING.md`), RestoreSessions choose them with
    /// `spec.adopted`, and the repository is read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<Adoption>,
}

/// Which tool wrote an adopted repository.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Adoption {
    /// The tool whose layout the snapshots follow.
    pub from: AdoptFrom,
}

/// A tool whose restic repositories can be adopted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdoptFrom {
    /// Velero's file-system backup with the restic uploader.
    Velero,
    /// K8up.
    K8up,
    /// Stash v1 (AppsCode).
    Stash,
    /// VolSync's restic mover.
    VolSync,
}

impl AdoptFrom {
    /// The layout this names.
    pub fn tool(self) -> crate::adopt::Tool {
        match self {
            AdoptFrom::Velero => crate::adopt::Tool::Velero,
            AdoptFrom::K8up => crate::adopt::Tool::K8up,
            AdoptFrom::Stash => crate::adopt::Tool::Stash,
            AdoptFrom::VolSync => crate::adopt::Tool::VolSync,
        }
    }
}

impl RepositorySpec {
    /// Whether nothing may be written to it (`readOnly`, or adopted).
    pub fn is_read_only(&self) -> bool {
        self.read_only == Some(true) || self.adopt.is_some()
    }

    /// Why a backup (or its retention) may not write to it, if so.
    pub fn refuses_writes(&self, name: &str) -> Option<String> {
        match (&self.adopt, self.read_only) {
            (Some(a), _) => Some(format!(
                "Repository {name} is adopted from {} and read-only: nothing is written to it; back up into a Repository of your own (snapshots continue there)",
                a.from.tool().name()
            )),
            (None, Some(true)) => Some(format!(
                "Repository {name} is read-only (spec.readOnly): nothing is written to it"
            )),
            _ => None,
        }
    }
}

/// When a Repository's unreferenced data is pruned.
///
/// Retention (forgetting snapshots) runs after every session; pruning, which
/// rewrites packs under the exclusive lock, runs at most every
/// `pruneInterval`, and only inside `window` when one is given.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Prune at most this often, e.g. `24h` (the default), `7d`; `0s` prunes
    /// after every retention run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("pruneInterval must be a duration such as \"12h\", \"7d\" or \"0s\""))]
    #[schemars(length(min = 2, max = 32))]
    pub prune_interval: Option<String>,
    /// A daily window (UTC) outside which no prune starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
}

/// A daily time window, in UTC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When it opens, `HH:MM` in UTC.
    #[x_kube(validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("start must be a time of day HH:MM (UTC), e.g. \"02:00\""))]
    #[schemars(length(min = 5, max = 5))]
    pub start: String,
    /// How long it stays open, e.g. `4h` (at most `24h`).
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("duration must be a duration such as \"4h\" or \"90m\""))]
    #[schemars(length(min = 2, max = 32))]
    pub duration: String,
}

/// The prune interval when a Repository gives none.
pub const DEFAULT_PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether a prune may start now, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneDecision {
    /// Prune now.
    Due,
    /// Not now: the reason, for the status.
    NotDue(String),
}

impl Maintenance {
    /// Whether a prune may start at `now`, after the last one at `last`
    /// (`None`: never pruned). An invalid setting is an error (the schema
    /// refuses them; this guards objects written before it did).
    pub fn prune_decision(
        &self,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<PruneDecision, String> {
        let interval = match &self.prune_interval {
            Some(s) => {
                crate::parse_duration(s).map_err(|e| format!("maintenance.pruneInterval: {e}"))?
            }
            None => DEFAULT_PRUNE_INTERVAL,
        };
        if let Some(w) = &self.window {
            let (open, close) = w.around(now)?;
            if now < open || now >= close {
                return Ok(PruneDecision::NotDue(format!(
                    "outside the maintenance window ({} UTC for {}); the next opens at {}",
                    w.start,
                    w.duration,
                    if now < open {
                        open
                    } else {
                        open + chrono::Duration::days(1)
                    }
                    .format("%Y-%m-%dT%H:%M:%SZ")
                )));
            }
        }
        if let Some(last) = last {
            let next = last + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
            if now < next {
                return Ok(PruneDecision::NotDue(format!(
                    "last pruned at {}; pruneInterval {} allows the next prune after {}",
                    last.format("%Y-%m-%dT%H:%M:%SZ"),
                    self.prune_interval.as_deref().unwrap_or("24h"),
                    next.format("%Y-%m-%dT%H:%M:%SZ")
                )));
            }
        }
        Ok(PruneDecision::Due)
    }
}

impl MaintenanceWindow {
    /// The opening and closing of the window that opened last at or before
    /// `now` (it may have closed already).
    fn around(&self, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
        let start = chrono::NaiveTime::parse_from_str(&self.start, "%H:%M")
            .map_err(|_| format!("maintenance.window.start {:?} is not HH:MM", self.start))?;
        let length = crate::parse_duration(&self.duration)
            .map_err(|e| format!("maintenance.window.duration: {e}"))?;
        if length.is_zero() || length > std::time::Duration::from_secs(24 * 3600) {
            return Err(format!(
                "maintenance.window.duration {:?} must be more than 0 and at most 24h",
                self.duration
            ));
        }
        let today = now.date_naive().and_time(start).and_utc();
        let open = if today <= now {
            today
        } else {
            today - chrono::Duration::days(1)
        };
        let close = open + chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX);
        Ok((open, close))
    }
}

/// Who may use a Repository.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UsagePolicy {
    /// The namespaces admitted.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
}

/// The namespaces a Repository admits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.from == 'Selector' ? has(self.selector) : !has(self.selector)").message("selector is required when from is Selector, and allowed only then"))]
pub struct AllowedNamespaces {
    /// `Same` (only the Repository's namespace), `All`, or `Selector`.
    #[serde(default)]
    pub from: NamespacesFrom,
    /// Label selector of the admitted namespaces, when `from` is `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// How a Repository picks the namespaces it admits.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum NamespacesFrom {
    /// Only the Repository's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
    /// The namespaces matching `selector`.
    Selector,
}

/// What the controller knows about a Repository.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    /// Number of snapshots after the last backup or retention run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i64>,
    /// Total size of the repository's packs in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<i64>,
    /// When the last successful backup into this repository finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    /// The current or last check run (see `spec.check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRun>,
    /// When the last check run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// `Passed` or `Failed`: how the last check run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_result: Option<String>,
    /// The last tick of `spec.check.schedule` that started a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_schedule_time: Option<Time>,
    /// Standard conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn m(interval: Option<&str>, window: Option<(&str, &str)>) -> Maintenance {
        Maintenance {
            prune_interval: interval.map(str::to_owned),
            window: window.map(|(start, duration)| MaintenanceWindow {
                start: start.into(),
                duration: duration.into(),
            }),
        }
    }

    #[test]
    fn the_interval_counts_from_the_last_prune() {
        let d = Maintenance::default();
        let now = at("2026-12-03T12:00:00Z");
        assert_eq!(d.prune_decision(None, now), Ok(PruneDecision::Due));
        let r = d
            .prune_decision(Some(at("2026-12-03T00:00:00Z")), now)
            .unwrap();
        let PruneDecision::NotDue(why) = r else {
            panic!("due 12 h after the last prune with the default of 24 h")
        };
        assert!(why.contains("2026-12-04T00:00:00Z"), "{why}");
        assert_eq!(
            d.prune_decision(Some(at("2026-12-02T12:00:00Z")), now),
            Ok(PruneDecision::Due)
        );
        let every = m(Some("0s"), None);
        assert_eq!(every.prune_decision(Some(now), now), Ok(PruneDecision::Due));
        let weekly = m(Some("7d"), None);
        assert!(matches!(
            weekly.prune_decision(Some(at("2026-11-27T12:00:01Z")), now),
            Ok(PruneDecision::NotDue(_))
        ));
        assert_eq!(
            weekly.prune_decision(Some(at("2026-11-26T12:00:00Z")), now),
            Ok(PruneDecision::Due)
        );
    }

    #[test]
    fn a_window_opens_daily_and_may_span_midnight() {
        let night = m(Some("0s"), Some(("22:00", "4h")));
        for (t, due) in [
            ("2026-12-03T21:59:59Z", false),
            ("2026-12-03T22:00:00Z", true),
            ("2026-12-03T23:59:00Z", true),
            ("2026-12-04T01:59:59Z", true),
            ("2026-12-04T02:00:00Z", false),
            ("2026-12-04T12:00:00Z", false),
        ] {
            let r = night.prune_decision(None, at(t)).unwrap();
            assert_eq!(r == PruneDecision::Due, due, "{t}: {r:?}");
        }
        let PruneDecision::NotDue(why) = night
            .prune_decision(None, at("2026-12-04T12:00:00Z"))
            .unwrap()
        else {
            unreachable!()
        };
        assert!(why.contains("2026-12-04T22:00:00Z"), "{why}");
        // Inside the window the interval still applies.
        assert!(matches!(
            m(None, Some(("22:00", "4h")))
                .prune_decision(Some(at("2026-12-03T22:30:00Z")), at("2026-12-03T23:00:00Z")),
            Ok(PruneDecision::NotDue(_))
        ));
    }

    #[test]
    fn invalid_settings_are_errors() {
        let now = at("2026-12-03T12:00:00Z");
        for bad in [
            m(Some("soon"), None),
            m(None, Some(("25:00", "1h"))),
            m(None, Some(("02:00", "25h"))),
            m(None, Some(("02:00", "0s"))),
        ] {
            assert!(bad.prune_decision(None, now).is_err(), "{bad:?}");
        }
    }
}
