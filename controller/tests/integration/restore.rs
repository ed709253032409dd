//! RestoreSessions: targets resolved into one item per target volume on its
//! pod's node, with the snapshot hosts to pick from; waiting for pods not
//! yet scheduled within the timeout; refusals as conditions and events;
//! item phases aggregated into the session's.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::{json, Value};
use stash_api::policy::HostPathAllowList;
use stash_api::{ItemPhase, RestoreSession, RestoreSessionStatus, SessionPhase};

use crate::common::*;

fn pod_manifest(name: &str, node: Option<&str>, annotations: Value, volumes: Value) -> Value {
    let mut spec = json!({
        "containers": [{"name": "app", "image": "busybox"}],
        "volumes": volumes,
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    })
}

async fn restore(client: &kube::Client, name: &str, spec: Value) {
    let mut spec = spec;
    if spec.get("repository").is_none() {
        spec["repository"] = json!({"name": "main"});
    }
    create::<RestoreSession>(
        client,
        "team",
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

async fn restore_where(
    client: &kube::Client,
    name: &str,
    what: &str,
    pred: impl Fn(&RestoreSessionStatus) -> bool,
) -> RestoreSessionStatus {
    let timeout = Duration::from_secs(20);
    status_where::<RestoreSession>(client, ("team", name), timeout, what, pred).await
}

fn ready_reason(st: &RestoreSessionStatus) -> Option<&str> {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Vec<&'a str>,
    ItemPhase,
);

fn rows(st: &RestoreSessionStatus) -> Vec<Row<'_>> {
    st.items
        .iter()
        .map(|i| {
            (
                i.common.pod.as_str(),
                i.common.volume.as_str(),
                i.source_volume.as_str(),
                i.common.node.as_deref(),
                i.source_hosts.iter().map(String::as_str).collect(),
                i.common.phase,
            )
        })
        .collect()
}

#[tokio::test]
async fn restores_resolve_targets_wait_for_scheduling_and_aggregate() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    namespace(&client, "infra", &[]).await;
    repository(&client, "team", "main", None).await;
    repository(&client, "infra", "private", None).await;
    repository(
        &client,
        "infra",
        "shared",
        Some(json!({"allowedNamespaces": {"from": "All"}})),
    )
    .await;
    let claim = |name: &str, claim: &str| json!({"name": name, "persistentVolumeClaim": {"claimName": claim}});
    let empty = |name: &str| json!({"name": name, "emptyDir": {}});
    create::<Pod>(
        &client,
        "team",
        pod_manifest(
            "web-0",
            Some("node-a"),
            json!({"stash.rs/backup-volumes": "data,cache"}),
            json!([claim("data", "web-data"), empty("cache"), empty("tmp")]),
        ),
    )
    .await;
    create::<Pod>(
        &client,
        "team",
        pod_manifest(
            "host-0",
            Some("node-a"),
            json!({}),
            json!([{"name": "root", "hostPath": {"path": "/etc"}}]),
        ),
    )
    .await;
    let mut settings = settings();
    settings.host_paths = HostPathAllowList::new(["/srv".into()]);
    let (shutdown, handle, _m) = start_controller(&client, settings);

    // A pod: its opted-in volumes, from its own snapshots.
    restore(&client, "r-pod", json!({"target": {"pod": "web-0"}})).await;
    let st = restore_where(&client, "r-pod", "items", |st| !st.items.is_empty()).await;
    assert_eq!(st.phase, SessionPhase::Running);
    assert_eq!(st.progress.as_deref(), Some("0/2"));
    assert_eq!(
        rows(&st),
        [
            (
                "web-0",
                "data",
                "data",
                Some("node-a"),
                vec!["team/web-data"],
                ItemPhase::Pending
            ),
            (
                "web-0",
                "cache",
                "cache",
                Some("node-a"),
                vec!["team/web-0/cache"],
                ItemPhase::Pending
            ),
        ]
    );
    // Node a's agent watches it; no other agent does.
    node_labels_become::<RestoreSession>(&client, "team", "r-pod", &["node-a"]).await;
    // The agent restores one and fails the other.
    for (i, phase) in [(0, "Succeeded"), (1, "Failed")] {
        let item = &st.items[i];
        let mut ops = item_identity(i, "team", &item.common.pod, &item.common.volume);
        ops.extend([
            json!({"op": "test", "path": format!("/status/items/{i}/phase"), "value": "Pending"}),
            json!({"op": "replace", "path": format!("/status/items/{i}/phase"), "value": phase}),
            json!({"op": "add", "path": format!("/status/items/{i}/claimedBy"), "value": "node-a/a/1"}),
        ]);
        agent_patch(&client, "restoresessions", "team", "r-pod", json!(ops))
            .await
            .unwrap();
    }
    let st = restore_where(&client, "r-pod", "the final phase", |st| {
        st.phase.is_finished()
    })
    .await;
    assert_eq!(st.phase, SessionPhase::PartiallyFailed);
    assert_eq!(st.progress.as_deref(), Some("2/2"));
    assert!(st.completion_time.is_some());
    node_labels_become::<RestoreSession>(&client, "team", "r-pod", &[]).await;
    eventually(Duration::from_secs(10), "a PartiallyFailed event", || {
        let client = client.clone();
        async move {
            events_of(&client, "team", "r-pod")
                .await
                .into_iter()
                .find(|e| e.0 == "Warning" && e.1 == "PartiallyFailed")
        }
    })
    .await;

    // A claim, from another workload's snapshots.
    restore(
        &client,
        "r-pvc",
        json!({"target": {"persistentVolumeClaim": "web-data"}, "source": {"name": "old-web"}}),
    )
    .await;
    let st = restore_where(&client, "r-pvc", "items", |st| !st.items.is_empty()).await;
    assert_eq!(
        rows(&st),
        [(
            "web-0",
            "data",
            "data",
            Some("node-a"),
            vec!["team/old-web", "team/old-web/data"],
            ItemPhase::Pending
        )]
    );

    // A mapping naming a volume the pod lacks: that item fails at once.
    restore(
        &client,
        "r-map",
        json!({"target": {"pod": "web-0"}, "volumes": [
            {"source": "cache", "target": "tmp"}, {"source": "x", "target": "nope"}]}),
    )
    .await;
    let st = restore_where(&client, "r-map", "items", |st| !st.items.is_empty()).await;
    assert_eq!(st.items[0].source_hosts, ["team/web-0/cache"]);
    assert_eq!(
        (st.items[0].common.volume.as_str(), st.items[0].common.phase),
        ("tmp", ItemPhase::Pending)
    );
    assert_eq!(st.items[1].common.phase, ItemPhase::Failed);
    assert_eq!(
        st.items[1].common.error.as_deref(),
        Some("pod team/web-0 has no volume named \"nope\"")
    );
    assert_eq!(st.progress.as_deref(), Some("1/2"));

    // A pod that does not exist yet, then exists unscheduled: the session
    // waits; once bound to a node, it resolves.
    restore(
        &client,
        "r-late",
        json!({"target": {"pod": "late-0"}, "volumes": [{"source": "data", "target": "data"}], "timeout": "5m"}),
    )
    .await;
    let st = restore_where(&client, "r-late", "waiting for the pod", |st| {
        ready_reason(st) == Some("WaitingForTarget")
    })
    .await;
    assert_eq!(st.phase, SessionPhase::Pending);
    assert!(
        st.conditions[0]
            .message
            .contains("pod team/late-0 does not exist yet"),
        "{:?}",
        st.conditions
    );
    create::<Pod>(
        &client,
        "team",
        pod_manifest("late-0", None, json!({}), json!([empty("data")])),
    )
    .await;
    restore_where(&client, "r-late", "waiting for scheduling", |st| {
        st.conditions
            .iter()
            .any(|c| c.message.contains("late-0 not scheduled to a node yet"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api: Api<RestoreSession> = Api::namespaced(client.clone(), "team");
    assert!(api
        .get("r-late")
        .await
        .unwrap()
        .status
        .unwrap()
        .items
        .is_empty());
    bind(&client, "team", "late-0", "node-b").await;
    let st = restore_where(&client, "r-late", "items once scheduled", |st| {
        !st.items.is_empty()
    })
    .await;
    assert_eq!(
        rows(&st),
        [(
            "late-0",
            "data",
            "data",
            Some("node-b"),
            vec!["team/late-0/data"],
            ItemPhase::Pending
        )]
    );

    // A StatefulSet: items pod by pod as they appear (db-0 is restored
    // while db-1 does not exist yet), done once both are; identity is the
    // workload's.
    let sts: StatefulSet = create(
        &client,
        "team",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
               "spec": {"replicas": 2, "serviceName": "db",
                        "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}},
                                     "spec": {"containers": [{"name": "db", "image": "busybox"}]}}}}),
    )
    .await;
    let sts_pod = |i: usize| {
        let mut m = pod_manifest(
            &format!("db-{i}"),
            Some(["node-a", "node-b"][i]),
            json!({"stash.rs/backup-volumes": "data"}),
            json!([empty("data")]),
        );
        m["metadata"]["labels"] = json!({"app": "db"});
        m["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
            "name": "db", "uid": sts.metadata.uid, "controller": true}]);
        m
    };
    create::<Pod>(&client, "team", sts_pod(0)).await;
    restore(
        &client,
        "r-sts",
        json!({"target": {"workload": {"kind": "StatefulSet", "name": "db"}}}),
    )
    .await;
    restore_where(&client, "r-sts", "waiting for the second pod", |st| {
        st.conditions.iter().any(|c| {
            c.message
                .contains("StatefulSet team/db has 1 of its 2 pod(s)")
        })
    })
    .await;
    create::<Pod>(&client, "team", sts_pod(1)).await;
    let st = restore_where(&client, "r-sts", "items", |st| st.items.len() == 2).await;
    assert_eq!(
        rows(&st),
        [
            (
                "db-0",
                "data",
                "data",
                Some("node-a"),
                vec!["team/db/data"],
                ItemPhase::Pending
            ),
            (
                "db-1",
                "data",
                "data",
                Some("node-b"),
                vec!["team/db/data"],
                ItemPhase::Pending
            ),
        ]
    );

    // Never scheduled before the timeout: the item fails with the reason.
    create::<Pod>(
        &client,
        "team",
        pod_manifest("never-0", None, json!({}), json!([empty("data")])),
    )
    .await;
    restore(
        &client,
        "r-never",
        json!({"target": {"pod": "never-0"}, "volumes": [{"source": "data", "target": "data"}], "timeout": "3s"}),
    )
    .await;
    let st = restore_where(&client, "r-never", "the timeout", |st| {
        st.phase.is_finished()
    })
    .await;
    assert_eq!(st.phase, SessionPhase::Failed);
    assert!(
        st.items[0]
            .common
            .error
            .as_deref()
            .unwrap()
            .contains("was not scheduled to a node before spec.timeout"),
        "{:?}",
        st.items
    );

    // Refusals.
    let refused = [
        (
            "r-private",
            json!({"target": {"pod": "web-0"},
                   "repository": {"name": "private", "namespace": "infra"}}),
            "RepositoryNotAllowed",
        ),
        (
            "r-steal",
            json!({"target": {"pod": "web-0"},
                   "repository": {"name": "shared", "namespace": "infra"},
                   "source": {"namespace": "other", "name": "web"}}),
            "SourceNotAllowed",
        ),
        (
            "r-host",
            json!({"target": {"pod": "host-0"},
                   "volumes": [{"source": "root", "target": "root"}]}),
            "NoVolumes",
        ),
    ];
    let mut st = RestoreSessionStatus::default();
    for (name, spec, reason) in refused {
        restore(&client, name, spec).await;
        st = restore_where(&client, name, "refusal", |st| st.phase.is_finished()).await;
        assert_eq!(
            (st.phase, ready_reason(&st)),
            (SessionPhase::Failed, Some(reason)),
            "{name}"
        );
    }
    // r-host's refusal says which volume.
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "HostPathNotAllowed")
        .unwrap();
    assert!(c.message.contains("hostPath \"/etc\""), "{}", c.message);
    for (name, reason) in [
        ("r-private", "RepositoryNotAllowed"),
        ("r-steal", "SourceNotAllowed"),
        ("r-host", "HostPathNotAllowed"),
    ] {
        eventually(
            Duration::from_secs(10),
            &format!("a {reason} event"),
            || {
                let client = client.clone();
                async move {
                    events_of(&client, "team", name)
                        .await
                        .into_iter()
                        .find(|e| e.0 == "Warning" && e.1 == reason)
                }
            },
        )
        .await;
    }
    stop_controller(shutdown, handle).await;
}
