//! From a target (label selector, workload or PVC) to pods, and from pods
//! to per-volume items, each on the node its pod runs on.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::Client;
use stash_api::annotations::opted_in_volumes;
use stash_api::{BackupItem, BackupTarget, Executor, ItemCommon, ItemPhase, WorkloadKind};

use crate::error::{kube_err, Result};
use stash_api::policy::{selector_query, HostPathAllowList};

/// The pods of `target` in namespace `ns` that are not being deleted,
/// sorted by name; none when the named workload or pod does not exist.
///
/// A terminating pod is left out: its volumes are about to be torn down (an
/// emptyDir with them), and the replacement its controller creates is the
/// one whose data matters; backing up the old one would race the kubelet.
///
/// A pod that has ended (`Succeeded` or `Failed`) is left out too: the
/// kubelet has unmounted its volumes, so no agent can read them, and a
/// claim only such pods used is a claim no pod mounts (a Job backs it up).
/// So are the pods of our own Jobs: they mount a claim only to back it up.
pub async fn target_pods(client: &Client, ns: &str, target: &BackupTarget) -> Result<Vec<Pod>> {
    let mut pods = all_target_pods(client, ns, target).await?;
    pods.retain(mounts_volumes);
    Ok(pods)
}

/// Whether `pod` has its volumes mounted, or is about to: not being
/// deleted, not ended, and not one of our Jobs' pods.
pub fn mounts_volumes(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let ours = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/name"))
        .is_some_and(|n| n == JOB_POD_NAME);
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && !ours
}

/// The `app.kubernetes.io/name` label of the pods of our Jobs.
pub const JOB_POD_NAME: &str = "stash-job";

async fn all_target_pods(client: &Client, ns: &str, target: &BackupTarget) -> Result<Vec<Pod>> {
    if let Some(name) = &target.pod {
        return Ok(get_pod(client, ns, name).await?.into_iter().collect());
    }
    if let Some(w) = &target.workload {
        return Ok(workload_pods(client, ns, w.kind, &w.name)
            .await?
            .map(|w| w.pods)
            .unwrap_or_default());
    }
    if let Some(s) = &target.selector {
        return selected_pods(client, ns, s).await;
    }
    claim_pods(
        client,
        ns,
        target
            .persistent_volume_claim
            .as_deref()
            .unwrap_or_default(),
    )
    .await
}

/// Pod `name` in `ns`, if it exists.
pub async fn get_pod(client: &Client, ns: &str, name: &str) -> Result<Option<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.get_opt(name)
        .await
        .map_err(kube_err("get pod", ns, name))
}

/// The pods in `ns` matching `selector`, sorted by name.
async fn selected_pods(client: &Client, ns: &str, selector: &LabelSelector) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&selector_query(selector));
    let mut list = pods
        .list(&lp)
        .await
        .map_err(kube_err("list pods", ns, "*"))?
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(list)
}

/// The pods in `ns` mounting PersistentVolumeClaim `claim`, sorted by name.
pub async fn claim_pods(client: &Client, ns: &str, claim: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Pod> = pods
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list pods", ns, "*"))?
        .items
        .into_iter()
        .filter(|p| !claim_volumes(p, claim).is_empty())
        .collect();
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(list)
}

/// A workload's pods and how many it wants.
pub struct WorkloadPods {
    /// Its pods now, sorted by name.
    pub pods: Vec<Pod>,
    /// How many pods it wants: `spec.replicas` (default 1) of a Deployment
    /// or StatefulSet, `status.desiredNumberScheduled` of a DaemonSet.
    pub desired: usize,
}

/// The pods of workload `kind`/`name` in `ns`, or `None` when it does not
/// exist.
pub async fn workload_pods(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
) -> Result<Option<WorkloadPods>> {
    let replicas = |r: Option<i32>| usize::try_from(r.unwrap_or(1)).unwrap_or(0);
    let found: Option<(LabelSelector, usize)> = match kind {
        WorkloadKind::Deployment => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            api.get_opt(name)
                .await
                .map_err(kube_err("get Deployment", ns, name))?
                .and_then(|w| w.spec)
                .map(|s| (s.selector, replicas(s.replicas)))
        }
        WorkloadKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
            api.get_opt(name)
                .await
                .map_err(kube_err("get StatefulSet", ns, name))?
                .and_then(|w| w.spec)
                .map(|s| (s.selector, replicas(s.replicas)))
        }
        WorkloadKind::DaemonSet => {
            let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
            api.get_opt(name)
                .await
                .map_err(kube_err("get DaemonSet", ns, name))?
                .and_then(|w| {
                    let desired = w.status.map(|s| s.desired_number_scheduled).unwrap_or(0);
                    w.spec
                        .map(|s| (s.selector, usize::try_from(desired).unwrap_or(0)))
                })
        }
    };
    let Some((selector, desired)) = found else {
        return Ok(None);
    };
    Ok(Some(WorkloadPods {
        pods: selected_pods(client, ns, &selector).await?,
        desired,
    }))
}

/// Names of `pod`'s volumes that mount PersistentVolumeClaim `claim`.
pub fn claim_volumes(pod: &Pod, claim: &str) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        })
        .map(|v| v.name.clone())
        .collect()
}

/// The outcome of resolving pods into items.
#[derive(Debug, Default, PartialEq)]
pub struct Resolution {
    /// One per volume to back up.
    pub items: Vec<BackupItem>,
    /// Volumes refused (hostPath outside the allow-list), as messages.
    pub refused: Vec<String>,
}

/// Checks the volume of `item` (its spec in the pod: `spec_volume`): a
/// hostPath outside `allow` is refused (reported in `refused`; `false`,
/// there is no item); a volume the pod lacks, or a pod on no node (with
/// `unscheduled` as the error), fails the item at once.
pub fn check_volume(
    item: &mut ItemCommon,
    spec_volume: Option<&Volume>,
    allow: &HostPathAllowList,
    unscheduled: String,
    refused: &mut Vec<String>,
) -> bool {
    let (ns, name, volume) = (&item.namespace, &item.pod, &item.volume);
    let Some(v) = spec_volume else {
        item.phase = ItemPhase::Failed;
        item.error = Some(format!("pod {ns}/{name} has no volume named {volume:?}"));
        return true;
    };
    if let Some(hp) = &v.host_path {
        if !allow.allows(ns, &hp.path) {
            refused.push(format!(
                "volume {volume:?} of pod {ns}/{name} is hostPath {:?}, outside the \
                 controller's allowed host paths (--allow-host-path)",
                hp.path
            ));
            return false;
        }
    }
    if item.node.is_none() {
        item.phase = ItemPhase::Failed;
        item.error = Some(unscheduled);
    }
    true
}

/// Items for `pods`: for each pod, the `volumes` named (or, when empty,
/// the PVC target's volumes, or those the pod opts in by annotation), each
/// assigned to the pod's node. A named volume the pod lacks, or a pod not
/// on a node, gives a Failed item that says so; a hostPath volume outside
/// `allow` gives no item and a refusal.
pub fn resolve_items(
    pods: &[Pod],
    volumes: &[String],
    pvc: Option<&str>,
    allow: &HostPathAllowList,
) -> Resolution {
    let mut out = Resolution::default();
    // Claim name -> the index of its one item.
    let mut shared: std::collections::HashMap<String, usize> = Default::default();
    for pod in pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let wanted: Vec<String> = if !volumes.is_empty() {
            volumes.to_vec()
        } else if let Some(claim) = pvc {
            claim_volumes(pod, claim)
        } else {
            opted_in_volumes(pod.metadata.annotations.as_ref())
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        for volume in wanted {
            let spec_volume = pod
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .find(|v| v.name == volume);
            let mut item = BackupItem {
                common: ItemCommon {
                    namespace: ns.clone(),
                    pod: name.clone(),
                    volume: volume.clone(),
                    node: node.clone(),
                    executor: Some(Executor::NodeAgent),
                    ..ItemCommon::default()
                },
                pod_uid: pod.metadata.uid.clone(),
                host: Some(stash_api::identity::snapshot_host(pod, &volume)),
                ..BackupItem::default()
            };
            let unscheduled = format!(
                "pod {ns}/{name} is not scheduled to a node yet; no agent can read {volume:?}"
            );
            if !check_volume(
                &mut item.common,
                spec_volume,
                allow,
                unscheduled,
                &mut out.refused,
            ) {
                continue;
            }
            // A claim mounted by several pods (ReadWriteMany, or pods
            // sharing a ReadWriteOnce claim on one node) is one volume with
            // one identity (namespace/claim): it is backed up once per
            // session, by the first pod in name order that can (a Failed
            // item, e.g. an unscheduled pod's, gives way to a later one).
            if let Some(claim) = spec_volume
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone())
            {
                match shared.get(&claim) {
                    Some(&i) => {
                        let kept: &mut BackupItem = &mut out.items[i];
                        let replaces = kept.common.phase == ItemPhase::Failed
                            && item.common.phase != ItemPhase::Failed
                            || kept.common.phase == item.common.phase
                                && item.common.pod < kept.common.pod;
                        if replaces {
                            *kept = item;
                        }
                        continue;
                    }
                    None => {
                        shared.insert(claim, out.items.len());
                    }
                }
            }
            out.items.push(item);
        }
    }
    out
}

/// The item of PersistentVolumeClaim `claim` in `ns` that no pod mounts:
/// a Job backs it up (no node agent can read a volume nothing has
/// mounted). Its identity is the claim's, as when a pod mounts it
/// (`<ns>/<claim>`), so parents carry over between the executors; the pod
/// is empty and the volume is the claim's name (the snapshot path the Job
/// uses is decided by the Job: the latest snapshot's of that identity, or
/// `/<claim>`).
pub fn job_item(ns: &str, claim: &str) -> BackupItem {
    BackupItem {
        common: ItemCommon {
            namespace: ns.to_owned(),
            volume: claim.to_owned(),
            executor: Some(Executor::Job),
            persistent_volume_claim: Some(claim.to_owned()),
            ..ItemCommon::default()
        },
        host: Some(format!("{ns}/{claim}")),
        ..BackupItem::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, PersistentVolumeClaimVolumeSource, PodSpec, Volume,
    };
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn pod(
        name: &str,
        node: Option<&str>,
        annotations: &[(&str, &str)],
        volumes: Vec<Volume>,
    ) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("team".into());
        p.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        p.spec = Some(PodSpec {
            node_name: node.map(Into::into),
            volumes: Some(volumes),
            ..PodSpec::default()
        });
        p
    }

    fn empty_dir(name: &str) -> Volume {
        Volume {
            name: name.into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        }
    }

    #[test]
    fn opted_in_volumes_on_their_nodes() {
        let pods = [
            pod(
                "a",
                Some("n1"),
                &[("stash.rs/backup-volumes", "data,logs")],
                vec![empty_dir("data"), empty_dir("logs"), empty_dir("tmp")],
            ),
            pod(
                "b",
                Some("n2"),
                &[
                    ("stash.rs/backup-volumes", "data"),
                    ("stash.rs/backup-volumes-excludes", "data"),
                ],
                vec![empty_dir("data")],
            ),
            pod("c", Some("n2"), &[], vec![empty_dir("data")]),
        ];
        let r = resolve_items(&pods, &[], None, &HostPathAllowList::default());
        let got: Vec<(&str, &str, Option<&str>, ItemPhase)> = r
            .items
            .iter()
            .map(|i| {
                (
                    i.common.pod.as_str(),
                    i.common.volume.as_str(),
                    i.common.node.as_deref(),
                    i.common.phase,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", "data", Some("n1"), ItemPhase::Pending),
                ("a", "logs", Some("n1"), ItemPhase::Pending)
            ]
        );
        assert!(r.refused.is_empty());
    }

    #[test]
    fn missing_volume_unscheduled_pod_and_host_paths() {
        let host = |name: &str, path: &str| Volume {
            name: name.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.into(),
                type_: None,
            }),
            ..Volume::default()
        };
        let pods = [
            pod("a", None, &[], vec![empty_dir("data")]),
            pod(
                "b",
                Some("n1"),
                &[],
                vec![host("data", "/etc"), empty_dir("x")],
            ),
            pod("c", Some("n1"), &[], vec![host("data", "/srv/app/data")]),
        ];
        let allow = HostPathAllowList::new([PathBuf::from("/srv")]);
        let r = resolve_items(&pods, &["data".to_owned()], None, &allow);
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.items[0].common.phase, ItemPhase::Failed);
        assert!(r.items[0]
            .common
            .error
            .as_deref()
            .unwrap()
            .contains("not scheduled to a node"));
        assert_eq!(
            (r.items[1].common.pod.as_str(), r.items[1].common.phase),
            ("c", ItemPhase::Pending)
        );
        assert_eq!(r.refused.len(), 1);
        assert!(
            r.refused[0].contains("hostPath \"/etc\""),
            "{:?}",
            r.refused
        );

        let r = resolve_items(&pods[1..2], &["nope".to_owned()], None, &allow);
        assert_eq!(
            r.items[0].common.error.as_deref(),
            Some("pod team/b has no volume named \"nope\"")
        );
    }

    #[test]
    fn pvc_target_picks_the_claim_volume() {
        let claim = Volume {
            name: "vol".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "data".into(),
                read_only: None,
            }),
            ..Volume::default()
        };
        let pods = [pod("a", Some("n1"), &[], vec![claim, empty_dir("other")])];
        let r = resolve_items(&pods, &[], Some("data"), &HostPathAllowList::default());
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.items[0].common.volume, "vol");
    }

    /// Issue 14, failure 7: an RWX claim mounted by three pods gives one
    /// item (the first scheduled pod's in name order), while each pod's
    /// own emptyDir still gives its own.
    #[test]
    fn a_claim_mounted_by_several_pods_is_backed_up_once() {
        let claim = || Volume {
            name: "shared".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "media".into(),
                read_only: None,
            }),
            ..Volume::default()
        };
        let opt_in = [("stash.rs/backup-volumes", "shared,scratch")];
        let pods = [
            pod(
                "web-c",
                Some("n2"),
                &opt_in,
                vec![claim(), empty_dir("scratch")],
            ),
            pod("web-a", None, &opt_in, vec![claim(), empty_dir("scratch")]),
            pod(
                "web-b",
                Some("n1"),
                &opt_in,
                vec![claim(), empty_dir("scratch")],
            ),
        ];
        let r = resolve_items(&pods, &[], None, &HostPathAllowList::default());
        let shared: Vec<_> = r
            .items
            .iter()
            .filter(|i| i.common.volume == "shared")
            .collect();
        assert_eq!(shared.len(), 1, "{:?}", r.items);
        assert_eq!(shared[0].common.pod, "web-b");
        assert_eq!(shared[0].common.phase, ItemPhase::default());
        assert_eq!(shared[0].host.as_deref(), Some("team/media"));
        assert_eq!(
            r.items
                .iter()
                .filter(|i| i.common.volume == "scratch")
                .count(),
            3
        );
    }

    /// Issue 15: an ended pod (a finished Job's, say) and our own Jobs'
    /// pods do not count as mounting a claim; a Pending or Running one does.
    #[test]
    fn ended_pods_and_our_job_pods_mount_nothing() {
        let with = |phase: &str, label: Option<&str>| {
            let mut p = pod("p", Some("n1"), &[], vec![]);
            p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            p.metadata.labels =
                label.map(|l| [("app.kubernetes.io/name".to_owned(), l.to_owned())].into());
            p
        };
        assert!(mounts_volumes(&with("Running", None)));
        assert!(mounts_volumes(&with("Pending", Some("web"))));
        assert!(!mounts_volumes(&with("Succeeded", None)));
        assert!(!mounts_volumes(&with("Failed", None)));
        assert!(!mounts_volumes(&with("Running", Some(JOB_POD_NAME))));
        let mut gone = with("Running", None);
        gone.metadata.deletion_timestamp = Some(stash_api::time::to_time(chrono::Utc::now()));
        assert!(!mounts_volumes(&gone));
    }
}
