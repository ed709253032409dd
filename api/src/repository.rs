//! `Repository`: a restic-format repository and who may use it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

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
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
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
    /// Standard conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
