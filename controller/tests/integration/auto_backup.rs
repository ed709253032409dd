//! Auto-backup: pod annotations give a BackupConfiguration owned by the
//! pod's workload, updated with the annotations, removed without them;
//! invalid values give an Event on the pod.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use stash_api::BackupConfiguration;

use crate::common::*;

fn annotated_pod(
    name: &str,
    annotations: Value,
    owner: Option<Value>,
    hash: Option<&str>,
) -> Value {
    let mut m = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}],
                 "volumes": [{"name": "data", "emptyDir": {}}]},
    });
    if let Some(o) = owner {
        m["metadata"]["ownerReferences"] = json!([o]);
    }
    if let Some(h) = hash {
        m["metadata"]["labels"]["pod-template-hash"] = json!(h);
    }
    m
}

async fn config_where(
    client: &kube::Client,
    name: &str,
    what: &str,
    pred: impl Fn(&BackupConfiguration) -> bool,
) -> BackupConfiguration {
    let api: Api<BackupConfiguration> = Api::namespaced(client.clone(), "team");
    eventually(Duration::from_secs(20), what, || {
        let api = api.clone();
        let pred = &pred;
        async move { api.get_opt(name).await.ok()?.filter(|c| pred(c)) }
    })
    .await
}

async fn wait_event(client: &kube::Client, object: &str, reason: &str) -> String {
    eventually(
        Duration::from_secs(20),
        &format!("a {reason} event on {object}"),
        || {
            let client = client.clone();
            async move {
                events_of(&client, "team", object)
                    .await
                    .into_iter()
                    .find(|e| e.1 == reason)
                    .map(|e| e.2)
            }
        },
    )
    .await
}

#[tokio::test]
async fn annotations_make_owned_configurations() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    repository(&client, "team", "main", None).await;
    let (shutdown, handle, _m) = start_controller(&client, settings());

    // A Deployment's pod, through its ReplicaSet.
    let deploy: Deployment = create(
        &client,
        "team",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}),
    )
    .await;
    let rs: ReplicaSet = create(
        &client,
        "team",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": "web-7d9f8", "ownerReferences": [{"apiVersion": "apps/v1",
                   "kind": "Deployment", "name": "web", "uid": deploy.metadata.uid, "controller": true}]},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}),
    )
    .await;
    let rs_owner = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8",
                          "uid": rs.metadata.uid, "controller": true});
    create::<Pod>(
        &client,
        "team",
        annotated_pod(
            "web-7d9f8-abcde",
            json!({"stash.rs/backup-schedule": "0 3 * * *", "stash.rs/backup-repository": "main",
                   "stash.rs/backup-volumes": "data"}),
            Some(rs_owner),
            Some("7d9f8"),
        ),
    )
    .await;
    let cfg = config_where(&client, "auto-web", "auto-web", |_| true).await;
    assert_eq!(cfg.spec.schedule, "0 3 * * *");
    assert_eq!(cfg.spec.repository.name, "main");
    let w = cfg
        .spec
        .target
        .workload
        .as_ref()
        .expect("a workload target");
    assert_eq!(
        (format!("{:?}", w.kind).as_str(), w.name.as_str()),
        ("Deployment", "web")
    );
    let owners = cfg.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), Some(&owners[0].uid)),
        ("Deployment", deploy.metadata.uid.as_ref())
    );
    assert_eq!(
        cfg.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("stash.rs/auto-backup")
            .map(String::as_str),
        Some("true")
    );
    // The scheduler takes it like any configuration.
    config_where(&client, "auto-web", "auto-web scheduled", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.next_schedule_time.is_some())
    })
    .await;

    // The annotation changes: so does the configuration.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    pods.patch(
        "web-7d9f8-abcde",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"stash.rs/backup-schedule": "30 4 * * *"}}}),
        ),
    )
    .await
    .unwrap();
    config_where(&client, "auto-web", "the new schedule", |c| {
        c.spec.schedule == "30 4 * * *"
    })
    .await;

    // A pod without a workload: targets and is owned by the pod.
    let solo: Pod = create(
        &client,
        "team",
        annotated_pod(
            "solo",
            json!({"stash.rs/backup-schedule": "@daily", "stash.rs/backup-repository": "team/main"}),
            None,
            None,
        ),
    )
    .await;
    let cfg = config_where(&client, "auto-solo", "auto-solo", |_| true).await;
    assert_eq!(cfg.spec.target.pod.as_deref(), Some("solo"));
    assert_eq!(cfg.spec.repository.namespace.as_deref(), Some("team"));
    let owner = &cfg.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Pod", solo.metadata.uid.as_ref())
    );

    // Invalid values: an Event on the pod, no configuration.
    create::<Pod>(
        &client,
        "team",
        annotated_pod(
            "bad",
            json!({"stash.rs/backup-schedule": "every day", "stash.rs/backup-repository": "main"}),
            None,
            None,
        ),
    )
    .await;
    let note = wait_event(&client, "bad", "InvalidAutoBackup").await;
    assert!(note.starts_with("stash.rs/backup-schedule:"), "{note}");
    create::<Pod>(
        &client,
        "team",
        annotated_pod(
            "half",
            json!({"stash.rs/backup-repository": "main"}),
            None,
            None,
        ),
    )
    .await;
    let note = wait_event(&client, "half", "InvalidAutoBackup").await;
    assert!(note.contains("needs stash.rs/backup-schedule"), "{note}");

    // A hand-written configuration of the same name is left alone.
    configuration(
        &client,
        "team",
        "auto-mine",
        json!({"schedule": "0 1 * * *", "target": {"pod": "mine"}, "repository": {"name": "main"}}),
    )
    .await;
    create::<Pod>(
        &client,
        "team",
        annotated_pod(
            "mine",
            json!({"stash.rs/backup-schedule": "0 9 * * *", "stash.rs/backup-repository": "main"}),
            None,
            None,
        ),
    )
    .await;
    wait_event(&client, "mine", "AutoBackupNameTaken").await;
    let configs: Api<BackupConfiguration> = Api::namespaced(client.clone(), "team");
    assert_eq!(
        configs.get("auto-mine").await.unwrap().spec.schedule,
        "0 1 * * *"
    );
    assert!(configs.get_opt("auto-bad").await.unwrap().is_none());
    assert!(configs.get_opt("auto-half").await.unwrap().is_none());

    // The annotations go: so does the configuration.
    pods.patch(
        "web-7d9f8-abcde",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "stash.rs/backup-schedule": null, "stash.rs/backup-repository": null}}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "auto-web deleted", || {
        let configs = configs.clone();
        async move {
            configs
                .get_opt("auto-web")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert!(configs.get_opt("auto-solo").await.unwrap().is_some());
    stop_controller(shutdown, handle).await;
}
