//! Which node agents a session concerns, as labels an agent can watch by.
//!
//! A node agent needs only the sessions with unfinished work on its own
//! node, so its memory must not grow with the cluster (issue 14, failure 6).
//! The controller therefore labels every unfinished session with
//! `node.stash.rs/<node>` for each node that has an unfinished item or the
//! retention run of that session (items run by a Job excepted), and removes
//! the labels once that work is finished; each agent watches sessions with
//! the label selector of its own node only.
//!
//! The labels only narrow what an agent looks at: the agent still takes an
//! item only when the item's own `node` is its node, so a label a tenant
//! adds or removes by hand can hide its own sessions from agents, never
//! hand another namespace's work to an agent or change whose it is.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::{BackupSessionStatus, ItemPhase, RestoreSessionStatus};

/// The prefix of every node label.
pub const NODE_LABEL_PREFIX: &str = "node.stash.rs/";

/// The value of a node label.
pub const NODE_LABEL_VALUE: &str = "true";

/// The longest name part of a label key.
const MAX_NAME: usize = 63;

/// The label key that marks a session as having work on `node`.
///
/// A node name is a DNS subdomain (up to 253 characters of `[a-z0-9.-]`);
/// a label's name part holds at most 63. A name that fits is used as it is,
/// so `kubectl get backupsessions -l node.stash.rs/worker-1` works; a longer
/// one (or one that is not a valid label name) is replaced by `h-` and the
/// first 40 hex digits of its SHA-256.
pub fn node_label(node: &str) -> String {
    let fits = !node.is_empty()
        && node.len() <= MAX_NAME
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && node.as_bytes()[0].is_ascii_alphanumeric()
        && node.as_bytes()[node.len() - 1].is_ascii_alphanumeric();
    if fits {
        return format!("{NODE_LABEL_PREFIX}{node}");
    }
    let digest = Sha256::digest(node.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{NODE_LABEL_PREFIX}h-{}", &hex[..40])
}

/// The node labels a BackupSession with `status` should carry.
pub fn wanted_for_backup(status: Option<&BackupSessionStatus>) -> BTreeSet<String> {
    let Some(status) = status.filter(|s| !s.phase.is_finished()) else {
        return BTreeSet::new();
    };
    let items = status
        .items
        .iter()
        .map(|i| &i.common)
        .filter(|i| !i.runs_in_job())
        .map(|i| (i.node.as_deref(), i.phase));
    let retention = status
        .retention
        .iter()
        .map(|r| (r.node.as_deref(), r.phase));
    wanted(items.chain(retention))
}

/// The node labels a RestoreSession with `status` should carry.
pub fn wanted_for_restore(status: Option<&RestoreSessionStatus>) -> BTreeSet<String> {
    let Some(status) = status.filter(|s| !s.phase.is_finished()) else {
        return BTreeSet::new();
    };
    wanted(
        status
            .items
            .iter()
            .map(|i| &i.common)
            .filter(|i| !i.runs_in_job())
            .map(|i| (i.node.as_deref(), i.phase)),
    )
}

fn wanted<'a>(work: impl Iterator<Item = (Option<&'a str>, ItemPhase)>) -> BTreeSet<String> {
    work.filter(|(_, phase)| !phase.is_finished())
        .filter_map(|(node, _)| node.filter(|n| !n.is_empty()))
        .map(node_label)
        .collect()
}

/// The JSON merge patch that turns the node labels in `labels` into
/// `wanted` (other labels untouched), or `None` when they already agree.
pub fn label_patch(
    labels: Option<&BTreeMap<String, String>>,
    wanted: &BTreeSet<String>,
) -> Option<serde_json::Value> {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let mut changes = serde_json::Map::new();
    for (key, value) in labels {
        if key.starts_with(NODE_LABEL_PREFIX) && !wanted.contains(key) {
            changes.insert(key.clone(), serde_json::Value::Null);
        } else if wanted.contains(key) && value != NODE_LABEL_VALUE {
            changes.insert(key.clone(), NODE_LABEL_VALUE.into());
        }
    }
    for key in wanted {
        if !labels.contains_key(key) {
            changes.insert(key.clone(), NODE_LABEL_VALUE.into());
        }
    }
    (!changes.is_empty()).then(|| serde_json::json!({"metadata": {"labels": changes}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_name_that_fits_is_the_label_and_a_long_one_is_hashed() {
        assert_eq!(node_label("worker-1"), "node.stash.rs/worker-1");
        assert_eq!(
            node_label("ip-10-0-0-1.eu-west-1.compute.internal"),
            "node.stash.rs/ip-10-0-0-1.eu-west-1.compute.internal"
        );
        let long = format!("{}.example.com", "a".repeat(60));
        let label = node_label(&long);
        assert!(label.starts_with("node.stash.rs/h-"), "{label}");
        assert_eq!(label.len() - NODE_LABEL_PREFIX.len(), 42);
        assert_eq!(label, node_label(&long), "stable");
        assert_ne!(label, node_label(&format!("b{long}")));
        // Not a valid label name (a trailing dot): hashed too.
        assert!(node_label("node.").starts_with("node.stash.rs/h-"));
    }

    #[test]
    fn unfinished_work_on_a_node_wants_its_label_and_finished_or_job_work_does_not() {
        let status: BackupSessionStatus = serde_json::from_value(json!({
            "phase": "Running",
            "items": [
                {"namespace": "a", "pod": "p1", "volume": "v", "node": "n1", "phase": "Running"},
                {"namespace": "a", "pod": "p2", "volume": "v", "node": "n2", "phase": "Succeeded"},
                {"namespace": "a", "pod": "p3", "volume": "v", "node": "n3", "phase": "Pending",
                 "executor": "job"},
                {"namespace": "a", "pod": "p4", "volume": "v", "phase": "Pending"},
            ],
            "retention": {"phase": "Pending", "node": "n4"},
        }))
        .unwrap();
        let wanted = wanted_for_backup(Some(&status));
        let want: BTreeSet<String> = ["node.stash.rs/n1", "node.stash.rs/n4"]
            .map(String::from)
            .into();
        assert_eq!(wanted, want);

        let mut done = status.clone();
        done.phase = crate::SessionPhase::Succeeded;
        assert!(wanted_for_backup(Some(&done)).is_empty());
        assert!(wanted_for_backup(None).is_empty());

        let restore: RestoreSessionStatus = serde_json::from_value(json!({
            "phase": "Running",
            "items": [
                {"namespace": "a", "pod": "p1", "volume": "v", "sourceVolume": "v", "node": "n1",
                 "phase": "Pending"},
                {"namespace": "a", "pod": "p2", "volume": "v", "sourceVolume": "v", "node": "n2",
                 "phase": "Failed"},
            ],
        }))
        .unwrap();
        assert_eq!(
            wanted_for_restore(Some(&restore)),
            ["node.stash.rs/n1".to_owned()].into()
        );
    }

    #[test]
    fn the_patch_adds_and_removes_node_labels_only() {
        let labels: BTreeMap<String, String> = [
            ("app", "shop"),
            ("node.stash.rs/old", "true"),
            ("node.stash.rs/keep", "true"),
            ("node.stash.rs/odd", "no"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let wanted: BTreeSet<String> = [
            "node.stash.rs/keep",
            "node.stash.rs/new",
            "node.stash.rs/odd",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            label_patch(Some(&labels), &wanted),
            Some(json!({"metadata": {"labels": {
                "node.stash.rs/old": null,
                "node.stash.rs/new": "true",
                "node.stash.rs/odd": "true",
            }}}))
        );
        let agreed: BTreeMap<String, String> = [("app", "shop"), ("node.stash.rs/keep", "true")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert_eq!(
            label_patch(Some(&agreed), &["node.stash.rs/keep".to_owned()].into()),
            None
        );
        assert_eq!(label_patch(None, &BTreeSet::new()), None);
    }
}
