//! Snapshot identity of a pod volume, stable across pod restarts and
//! rescheduling, shared by the controller (which writes it into items) and
//! the agent (which labels snapshots with it and finds parents by it).
//!
//! - hostname: `<namespace>/<pvc>` for a volume backed by a
//!   PersistentVolumeClaim, `<namespace>/<workload>/<volume>` otherwise,
//!   where the workload is the Deployment, StatefulSet, DaemonSet, Job or
//!   other controller owning the pod, or the pod itself when it has none;
//! - path: `/<volume>`;
//! - tags: `namespace=<ns>`, `pod=<pod>`, `volume=<volume>`,
//!   `session=<session>` and `config=<backup configuration>`.
//!
//! A pod's UID never enters the identity: a recreated pod finds the
//! snapshots of its predecessor as parents.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Tag prefix naming the namespace a snapshot was taken in.
pub const TAG_NAMESPACE: &str = "namespace=";
/// Tag prefix naming the pod a snapshot was taken of.
pub const TAG_POD: &str = "pod=";
/// Tag prefix naming the pod volume a snapshot was taken of.
pub const TAG_VOLUME: &str = "volume=";
/// Tag prefix naming the BackupSession that took a snapshot.
pub const TAG_SESSION: &str = "session=";
/// Tag prefix naming the BackupConfiguration a snapshot belongs to.
pub const TAG_CONFIG: &str = "config=";

/// The workload a pod belongs to: its controlling owner's name, with a
/// Deployment's ReplicaSet mapped back to the Deployment (by dropping the
/// `pod-template-hash` suffix); the pod's own name when it has no owner.
pub fn workload_name(pod: &Pod) -> String {
    workload_name_of(&pod.metadata)
}

/// [`workload_name`] from a pod's metadata alone (e.g. from a
/// metadata-only watch).
pub fn workload_name_of(meta: &ObjectMeta) -> String {
    let pod_name = meta.name.clone().unwrap_or_default();
    let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return pod_name;
    };
    if owner.kind == "ReplicaSet" {
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return deployment.to_owned();
        }
    }
    owner.name.clone()
}

/// The PersistentVolumeClaim behind a pod volume, if any.
pub fn volume_claim<'a>(pod: &'a Pod, volume: &str) -> Option<&'a str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == volume)?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.as_str())
}

/// The snapshot hostname of a pod volume.
pub fn snapshot_host(pod: &Pod, volume: &str) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    match volume_claim(pod, volume) {
        Some(claim) => format!("{ns}/{claim}"),
        None => format!("{ns}/{}/{volume}", workload_name(pod)),
    }
}

/// The snapshot hostnames a restore may pick from for a source named
/// `name` (a PersistentVolumeClaim, a workload or a pod) in `namespace`
/// and the snapshot volume `volume`.
pub fn source_hosts(namespace: &str, name: &str, volume: &str) -> Vec<String> {
    vec![
        format!("{namespace}/{name}"),
        format!("{namespace}/{name}/{volume}"),
    ]
}

/// Where a restore into `target_volume` of `pod` takes its snapshots from:
/// the snapshot volume and the snapshot hostnames `latest` may pick among,
/// from the RestoreSession's spec and the pod alone (never from status,
/// which a tenant may be able to patch). `repo_in_session_ns`: the
/// Repository is the session's own; a source in another namespace is
/// refused otherwise (a tenant of a shared Repository restores only its
/// own snapshots). Never empty: there is no "any host".
pub fn restore_source(
    spec: &crate::RestoreSessionSpec,
    pod: &Pod,
    target_volume: &str,
    repo_in_session_ns: bool,
) -> Result<(String, Vec<String>), String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let source_volume = if spec.volumes.is_empty() {
        target_volume.to_owned()
    } else {
        spec.volumes
            .iter()
            .find(|m| m.target == target_volume)
            .map(|m| m.source.clone())
            .ok_or_else(|| {
                format!("volume {target_volume:?} is not a target of the session's spec.volumes")
            })?
    };
    let source = spec.source.as_ref();
    let hosts = match source.and_then(|s| s.name.as_deref()) {
        Some(name) => {
            let src_ns = source.and_then(|s| s.namespace.as_deref()).unwrap_or(ns);
            if src_ns != ns && !repo_in_session_ns {
                return Err(format!(
                    "spec.source names namespace {src_ns}: restoring another namespace's \
                     snapshots needs a Repository of the session's own namespace {ns}"
                ));
            }
            source_hosts(src_ns, name, &source_volume)
        }
        None => vec![match volume_claim(pod, target_volume) {
            Some(c) => format!("{ns}/{c}"),
            None => format!("{ns}/{}/{source_volume}", workload_name(pod)),
        }],
    };
    Ok((source_volume, hosts))
}

/// Where a Job's restore into PersistentVolumeClaim `claim` of `namespace`
/// (no pod, so no pod volume name) takes its snapshots from: the snapshot
/// volume named by the `spec.volumes` entry whose target is the claim, or,
/// without `spec.volumes`, empty: the one path of the sources' snapshots;
/// and the hostnames, from `spec.source` or the claim's own identity
/// (`<namespace>/<claim>`). The same namespace rule as [`restore_source`].
pub fn claim_restore_source(
    spec: &crate::RestoreSessionSpec,
    namespace: &str,
    claim: &str,
    repo_in_session_ns: bool,
) -> Result<(String, Vec<String>), String> {
    let source_volume = if spec.volumes.is_empty() {
        String::new()
    } else {
        spec.volumes
            .iter()
            .find(|m| m.target == claim)
            .map(|m| m.source.clone())
            .ok_or_else(|| {
                format!(
                    "PersistentVolumeClaim {claim:?} is not a target of the session's spec.volumes \
                     (a Job restores into the claim: name it as the target)"
                )
            })?
    };
    let source = spec.source.as_ref();
    let hosts = match source.and_then(|s| s.name.as_deref()) {
        Some(name) => {
            let src_ns = source
                .and_then(|s| s.namespace.as_deref())
                .unwrap_or(namespace);
            if src_ns != namespace && !repo_in_session_ns {
                return Err(format!(
                    "spec.source names namespace {src_ns}: restoring another namespace's \
                     snapshots needs a Repository of the session's own namespace {namespace}"
                ));
            }
            let mut hosts = vec![format!("{src_ns}/{name}")];
            if !source_volume.is_empty() {
                hosts.push(format!("{src_ns}/{name}/{source_volume}"));
            }
            hosts
        }
        None => vec![format!("{namespace}/{claim}")],
    };
    Ok((source_volume, hosts))
}

/// The path a pod volume is recorded under in its snapshots.
pub fn snapshot_path(volume: &str) -> String {
    format!("/{volume}")
}

/// The tags of a snapshot of a pod volume.
pub fn snapshot_tags(
    namespace: &str,
    pod: &str,
    volume: &str,
    session: &str,
    config: &str,
) -> Vec<String> {
    vec![
        format!("{TAG_NAMESPACE}{namespace}"),
        format!("{TAG_POD}{pod}"),
        format!("{TAG_VOLUME}{volume}"),
        format!("{TAG_SESSION}{session}"),
        format!("{TAG_CONFIG}{config}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, PodSpec, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(owner: Option<(&str, &str)>, hash: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web-7d9f8-abcde".into());
        p.metadata.namespace = Some("shop".into());
        p.metadata.owner_references = owner.map(|(kind, name)| {
            vec![OwnerReference {
                kind: kind.into(),
                name: name.into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]
        });
        p.metadata.labels = hash.map(|h| [("pod-template-hash".to_owned(), h.to_owned())].into());
        p.spec = Some(PodSpec {
            volumes: Some(vec![
                Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: "db-data".into(),
                        ..Default::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "cache".into(),
                    empty_dir: Some(Default::default()),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        });
        p
    }

    /// Issue 12, hole 6: the restore source follows from the spec and the
    /// pod (the agent no longer reads `sourceHosts` from status), is never
    /// empty, and another namespace's snapshots need the session's own
    /// Repository.
    #[test]
    fn restore_sources_come_from_the_spec_and_pod_and_are_never_empty() {
        let p = pod(Some(("ReplicaSet", "web-7d9f8")), Some("7d9f8"));
        let spec = |v: serde_json::Value| -> crate::RestoreSessionSpec {
            serde_json::from_value(v).unwrap()
        };
        let base = serde_json::json!({"repository": {"name": "r"}, "target": {"persistentVolumeClaim": "db-data"}});
        let own = spec(base.clone());
        assert_eq!(
            restore_source(&own, &p, "data", false).unwrap(),
            ("data".into(), vec!["shop/db-data".into()])
        );
        assert_eq!(
            restore_source(&own, &p, "cache", false).unwrap(),
            ("cache".into(), vec!["shop/web/cache".into()])
        );
        let mut mapped = base.clone();
        mapped["volumes"] = serde_json::json!([{"source": "old", "target": "cache"}]);
        let mapped = spec(mapped);
        assert_eq!(
            restore_source(&mapped, &p, "cache", false).unwrap(),
            ("old".into(), vec!["shop/web/old".into()])
        );
        assert!(restore_source(&mapped, &p, "data", false).is_err());
        let mut other = base;
        other["source"] = serde_json::json!({"namespace": "bank", "name": "vault"});
        let other = spec(other);
        let e = restore_source(&other, &p, "data", false).unwrap_err();
        assert!(e.contains("namespace bank"), "{e}");
        let (_, hosts) = restore_source(&other, &p, "data", true).unwrap();
        assert_eq!(hosts, ["bank/vault", "bank/vault/data"]);
    }

    #[test]
    fn identity_is_the_workload_or_claim_not_the_pod() {
        let p = pod(Some(("ReplicaSet", "web-7d9f8")), Some("7d9f8"));
        assert_eq!(workload_name(&p), "web");
        assert_eq!(snapshot_host(&p, "data"), "shop/db-data");
        assert_eq!(snapshot_host(&p, "cache"), "shop/web/cache");
        let s = pod(Some(("StatefulSet", "db")), None);
        assert_eq!(snapshot_host(&s, "cache"), "shop/db/cache");
        // A ReplicaSet not made by a Deployment keeps its own name.
        let r = pod(Some(("ReplicaSet", "plain")), Some("other"));
        assert_eq!(workload_name(&r), "plain");
        let bare = pod(None, None);
        assert_eq!(snapshot_host(&bare, "cache"), "shop/web-7d9f8-abcde/cache");
        assert_eq!(snapshot_path("cache"), "/cache");
        assert_eq!(
            snapshot_tags("shop", "p", "cache", "s1", "nightly"),
            [
                "namespace=shop",
                "pod=p",
                "volume=cache",
                "session=s1",
                "config=nightly"
            ]
        );
    }

    /// Issue 15: a Job's restore into a claim takes the claim's own
    /// snapshots (any one path) unless spec.source/spec.volumes say
    /// otherwise, with the same namespace rule.
    #[test]
    fn a_claim_restore_source_is_the_claim_or_the_spec() {
        let spec = |v: serde_json::Value| -> crate::RestoreSessionSpec {
            serde_json::from_value(v).unwrap()
        };
        let base = serde_json::json!({"repository": {"name": "r"}, "target": {"persistentVolumeClaim": "new"}, "executor": "job"});
        assert_eq!(
            claim_restore_source(&spec(base.clone()), "shop", "new", false).unwrap(),
            (String::new(), vec!["shop/new".to_owned()])
        );
        let mut from = base.clone();
        from["source"] = serde_json::json!({"name": "archive"});
        from["volumes"] = serde_json::json!([{"source": "data", "target": "new"}]);
        assert_eq!(
            claim_restore_source(&spec(from.clone()), "shop", "new", false).unwrap(),
            (
                "data".to_owned(),
                vec!["shop/archive".to_owned(), "shop/archive/data".to_owned()]
            )
        );
        assert!(
            claim_restore_source(&spec(from.clone()), "shop", "other", false)
                .unwrap_err()
                .contains("not a target")
        );
        from["source"]["namespace"] = serde_json::json!("bank");
        assert!(claim_restore_source(&spec(from.clone()), "shop", "new", false).is_err());
        assert!(claim_restore_source(&spec(from), "shop", "new", true).is_ok());
    }
}
