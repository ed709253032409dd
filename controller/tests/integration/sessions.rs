//! The controller and the agents share a BackupSession's status: items
//! updated by an agent while the controller writes progress are never
//! lost, and a claim whose heartbeat stopped is failed only by the
//! configuration's timeout.

use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::json;
use stash_api::{BackupSession, ItemPhase, SessionPhase};

use crate::common::*;

async fn resolved(client: &kube::Client, ns: &str, name: &str) -> BackupSession {
    let api: Api<BackupSession> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(20), "the session's items", || {
        let api = api.clone();
        async move {
            let s = api.get(name).await.ok()?;
            s.status
                .as_ref()
                .is_some_and(|st| st.phase == SessionPhase::Running && !st.items.is_empty())
                .then_some(s)
        }
    })
    .await
}

/// One agent working through item `i`: claim, `updates` progress reports,
/// finish with a snapshot id derived from the item.
async fn work_item(client: kube::Client, ns: String, session: String, i: usize, updates: u32) {
    let pod = format!("db-{i}");
    let claim = format!("node-{i}/agent-{i}/n1");
    let path = |f: &str| format!("/status/items/{i}/{f}");
    let mut ops = item_identity(i, &ns, &pod, "data");
    ops.extend([
        json!({"op": "test", "path": path("phase"), "value": "Pending"}),
        json!({"op": "replace", "path": path("phase"), "value": "Running"}),
        json!({"op": "add", "path": path("claimedBy"), "value": claim}),
        json!({"op": "add", "path": path("attempt"), "value": 1}),
        json!({"op": "add", "path": path("heartbeatTime"), "value": timestamp_ago(Duration::ZERO)}),
        json!({"op": "add", "path": path("startTime"), "value": timestamp_ago(Duration::ZERO)}),
    ]);
    agent_patch(&client, "backupsessions", &ns, &session, json!(ops))
        .await
        .unwrap_or_else(|code| panic!("claim of item {i} refused: {code}"));
    let mine = json!({"op": "test", "path": path("claimedBy"), "value": claim});
    for n in 1..=updates {
        let ops = json!([
            mine,
            {"op": "add", "path": path("bytesDone"), "value": n * 1000 + i as u32},
            {"op": "add", "path": path("filesDone"), "value": n},
            {"op": "add", "path": path("heartbeatTime"), "value": timestamp_ago(Duration::ZERO)},
        ]);
        agent_patch(&client, "backupsessions", &ns, &session, ops)
            .await
            .unwrap_or_else(|code| panic!("progress {n} of item {i} refused: {code}"));
    }
    let ops = json!([
        mine,
        {"op": "replace", "path": path("phase"), "value": "Succeeded"},
        {"op": "add", "path": path("snapshotId"), "value": format!("{i:064x}")},
        {"op": "add", "path": path("bytesAdded"), "value": i * 7},
        {"op": "add", "path": path("endTime"), "value": timestamp_ago(Duration::ZERO)},
    ]);
    agent_patch(&client, "backupsessions", &ns, &session, ops)
        .await
        .unwrap_or_else(|code| panic!("finish of item {i} refused: {code}"));
}

#[tokio::test]
async fn agent_updates_are_never_overwritten_by_the_controller() {
    let (_env, client) = control_plane().await;
    let ns = "team";
    namespace(&client, ns, &[]).await;
    repository(&client, ns, "main", None).await;
    const PODS: usize = 6;
    for i in 0..PODS {
        db_pod(&client, ns, &format!("db-{i}"), &format!("node-{i}")).await;
    }
    configuration(&client, ns, "db", db_spec(json!({}))).await;
    let (shutdown, handle, metrics) = start_controller(&client, settings());
    backup_session(&client, ns, "manual", "db").await;
    let s = resolved(&client, ns, "manual").await;
    let items = &s.status.as_ref().unwrap().items;
    assert_eq!(items.len(), PODS);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            (item.common.pod.as_str(), item.common.phase),
            (format!("db-{i}").as_str(), ItemPhase::Pending)
        );
    }

    // Each node's agent sees the session through its own node's label.
    let nodes: Vec<String> = (0..PODS).map(|i| format!("node-{i}")).collect();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    node_labels_become::<BackupSession>(&client, ns, "manual", &names).await;
    let sessions: Api<BackupSession> = Api::all(client.clone());
    let watched = |node: &str| {
        let sessions = sessions.clone();
        let selector = stash_api::nodes::node_label(node);
        async move {
            let list = sessions
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap();
            list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
        }
    };
    assert_eq!(watched("node-3").await, ["manual"]);
    assert!(watched("node-elsewhere").await.is_empty());

    // Every agent at once: each finish makes the controller write progress
    // while the others still report theirs.
    let workers: Vec<_> = (0..PODS)
        .map(|i| {
            tokio::spawn(work_item(
                client.clone(),
                ns.into(),
                "manual".into(),
                i,
                5 + 3 * i as u32,
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }

    let api: Api<BackupSession> = Api::namespaced(client.clone(), ns);
    let done = eventually(Duration::from_secs(20), "every item counted", || {
        let api = api.clone();
        async move {
            let s = api.get("manual").await.ok()?;
            let st = s.status.clone()?;
            (st.progress.as_deref() == Some(&format!("{PODS}/{PODS}"))).then_some(s)
        }
    })
    .await;
    let st = done.status.unwrap();
    for (i, item) in st.items.iter().enumerate() {
        let updates = 5 + 3 * i as i64;
        assert_eq!(
            item.common.phase,
            ItemPhase::Succeeded,
            "item {i}: {item:?}"
        );
        assert_eq!(
            item.common.snapshot_id,
            Some(format!("{i:064x}")),
            "item {i}"
        );
        assert_eq!(
            item.common.bytes_done,
            Some(updates * 1000 + i as i64),
            "item {i}"
        );
        assert_eq!(item.common.files_done, Some(updates), "item {i}");
        assert_eq!(item.bytes_added, Some(i as i64 * 7), "item {i}");
        assert_eq!(item.common.claim.attempt, Some(1), "item {i}");
        assert!(item.common.end_time.is_some(), "item {i}");
    }
    eprintln!(
        "status conflicts the controller resolved: {}",
        metrics.status_conflicts.get()
    );
    // Retention waits for every item, then runs on the first item's node.
    assert_eq!(st.phase, SessionPhase::Running);
    assert_eq!(
        wait_retention_pending(&client, ns, "manual").await,
        "node-0"
    );
    // Finished items no longer concern their nodes; the retention run's
    // node still does.
    node_labels_become::<BackupSession>(&client, ns, "manual", &["node-0"]).await;
    assert!(watched("node-3").await.is_empty());
    finish_retention(&client, ns, "manual", ItemPhase::Succeeded, None).await;
    eventually(Duration::from_secs(10), "the session to succeed", || {
        let api = api.clone();
        async move {
            let st = api.get("manual").await.ok()?.status?;
            (st.phase == SessionPhase::Succeeded).then_some(())
        }
    })
    .await;
    // A finished session concerns no agent.
    node_labels_become::<BackupSession>(&client, ns, "manual", &[]).await;
    // Its success is kept on the configuration and in the gauges the
    // alerts of deploy/monitoring/ use.
    let configs: Api<stash_api::BackupConfiguration> = Api::namespaced(client.clone(), ns);
    let done = api
        .get("manual")
        .await
        .unwrap()
        .status
        .unwrap()
        .completion_time;
    eventually(Duration::from_secs(10), "lastSuccessfulTime", || {
        let configs = configs.clone();
        let done = done.clone();
        async move {
            let st = configs.get("db").await.ok()?.status?;
            (st.last_successful_time.is_some() && st.last_successful_time == done).then_some(())
        }
    })
    .await;
    let at = done
        .as_ref()
        .map(stash_api::time::from_time)
        .unwrap()
        .timestamp();
    let text = metrics.render();
    for want in [
        format!(
            r#"stash_controller_backup_last_success_timestamp_seconds{{configuration="db",namespace="{ns}"}} {at}"#
        ),
        format!(
            r#"stash_controller_backup_last_session_succeeded{{configuration="db",namespace="{ns}"}} 1"#
        ),
        format!(
            r#"stash_controller_backup_schedule_interval_seconds{{configuration="db",namespace="{ns}"}}"#
        ),
    ] {
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn a_silent_claim_fails_only_by_the_configuration_timeout() {
    let (_env, client) = control_plane().await;
    let ns = "team";
    namespace(&client, ns, &[]).await;
    repository(&client, ns, "main", None).await;
    for i in 0..2 {
        db_pod(&client, ns, &format!("db-{i}"), "node-a").await;
    }
    configuration(&client, ns, "db", db_spec(json!({"timeout": "6s"}))).await;
    let (shutdown, handle, _metrics) = start_controller(&client, settings());
    backup_session(&client, ns, "manual", "db").await;
    resolved(&client, ns, "manual").await;
    // Item 0: claimed by an agent whose last heartbeat is an hour old.
    let mut ops = item_identity(0, ns, "db-0", "data");
    ops.extend([
        json!({"op": "test", "path": "/status/items/0/phase", "value": "Pending"}),
        json!({"op": "replace", "path": "/status/items/0/phase", "value": "Running"}),
        json!({"op": "add", "path": "/status/items/0/claimedBy", "value": "node-a/agent/dead"}),
        json!({"op": "add", "path": "/status/items/0/heartbeatTime", "value": timestamp_ago(Duration::from_secs(3600))}),
    ]);
    agent_patch(&client, "backupsessions", ns, "manual", json!(ops))
        .await
        .unwrap();
    let api: Api<BackupSession> = Api::namespaced(client.clone(), ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = api.get("manual").await.unwrap().status.unwrap();
    assert_eq!(
        st.items[0].common.phase,
        ItemPhase::Running,
        "an old heartbeat alone must not fail an item (the agent takes it over)"
    );
    assert_eq!(
        st.items[0].common.claim.claimed_by.as_deref(),
        Some("node-a/agent/dead")
    );

    let st = eventually(
        Duration::from_secs(15),
        "the timeout to fail both items",
        || {
            let api = api.clone();
            async move {
                let st = api.get("manual").await.ok()?.status?;
                (st.phase == SessionPhase::Failed).then_some(st)
            }
        },
    )
    .await;
    for item in &st.items {
        assert_eq!(item.common.phase, ItemPhase::Failed);
        assert!(
            item.common
                .error
                .as_deref()
                .unwrap()
                .starts_with("timed out: not finished 6s"),
            "{:?}",
            item.common.error
        );
        assert_eq!(item.common.claim.claimed_by, None, "the claim is revoked");
    }
    assert!(st.items[0]
        .common
        .error
        .as_deref()
        .unwrap()
        .contains("node-a/agent/dead"));
    // The revoked agent's next report fails its test.
    let ops = json!([
        {"op": "test", "path": "/status/items/0/claimedBy", "value": "node-a/agent/dead"},
        {"op": "replace", "path": "/status/items/0/phase", "value": "Succeeded"},
    ]);
    assert_eq!(
        agent_patch(&client, "backupsessions", ns, "manual", ops).await,
        Err(422)
    );
    stop_controller(shutdown, handle).await;
}

/// A pod being deleted is no backup target: its volumes are going away and
/// its replacement is the one to back up (found on a real node, where a
/// Deployment's old pod terminated while the next session resolved).
#[tokio::test]
async fn a_terminating_pod_is_not_backed_up() {
    let (_env, client) = control_plane().await;
    let ns = "team";
    namespace(&client, ns, &[]).await;
    repository(&client, ns, "main", None).await;
    for i in 0..2 {
        db_pod(&client, ns, &format!("db-{i}"), "node-a").await;
    }
    // A finalizer keeps db-1 terminating (no kubelet here to finish it).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    pods.patch(
        "db-1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": ["test.stash.rs/hold"]}})),
    )
    .await
    .unwrap();
    pods.delete("db-1", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    assert!(pods
        .get("db-1")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_some());
    configuration(&client, ns, "db", db_spec(json!({}))).await;
    let (shutdown, handle, _metrics) = start_controller(&client, settings());
    backup_session(&client, ns, "manual", "db").await;
    let s = resolved(&client, ns, "manual").await;
    let items: Vec<_> = s
        .status
        .as_ref()
        .unwrap()
        .items
        .iter()
        .map(|i| i.common.pod.clone())
        .collect();
    assert_eq!(items, ["db-0"]);
    stop_controller(shutdown, handle).await;
}
