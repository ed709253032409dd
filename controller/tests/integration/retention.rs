//! The retention handoff: once every item of a BackupSession is finished
//! and one succeeded, the controller asks the agent of the first succeeded
//! item's node for a retention run; the session keeps running until it is
//! over, then takes its phase from the items, and the Repository gets the
//! figures the agent read.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use stash_api::{BackupSession, ItemPhase, Repository, SessionPhase};

use crate::common::*;

async fn setup(client: &kube::Client, timeout: Option<&str>) {
    namespace(client, "team", &[]).await;
    repository(client, "team", "main", None).await;
    for (i, node) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        db_pod(client, "team", &format!("db-{i}"), node).await;
    }
    let mut spec = db_spec(json!({"retention": {"keepLast": 4}}));
    if let Some(t) = timeout {
        spec["timeout"] = json!(t);
    }
    configuration(client, "team", "db", spec).await;
}

async fn session_where(
    client: &kube::Client,
    name: &str,
    what: &str,
    pred: impl Fn(&stash_api::BackupSessionStatus) -> bool,
) -> stash_api::BackupSessionStatus {
    let timeout = Duration::from_secs(20);
    status_where::<BackupSession>(client, ("team", name), timeout, what, pred).await
}

#[tokio::test]
async fn retention_runs_after_the_items_and_its_figures_reach_the_repository() {
    let (_env, client) = control_plane().await;
    setup(&client, None).await;
    let (shutdown, handle, _m) = start_controller(&client, settings());
    backup_session(&client, "team", "s1", "db").await;
    let st = session_where(&client, "s1", "items", |st| !st.items.is_empty()).await;
    // Item 0 fails, 1 and 2 succeed: the run goes to item 1's node.
    let items = st.items.clone();
    finish_item(&client, "team", "s1", 0, &items[0], ItemPhase::Failed).await;
    finish_item(&client, "team", "s1", 1, &items[1], ItemPhase::Succeeded).await;
    let st = session_where(&client, "s1", "progress 2/3", |st| {
        st.progress.as_deref() == Some("2/3")
    })
    .await;
    assert!(
        st.retention.is_none(),
        "retention before every item finished"
    );
    finish_item(&client, "team", "s1", 2, &items[2], ItemPhase::Succeeded).await;
    assert_eq!(
        wait_retention_pending(&client, "team", "s1").await,
        "node-b"
    );
    let st = session_where(&client, "s1", "the retention condition", |st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "RetentionRunning" && c.status == "True")
    })
    .await;
    assert_eq!(st.phase, SessionPhase::Running);
    assert_eq!(st.progress.as_deref(), Some("3/3"));
    assert!(st.completion_time.is_none());
    // Nothing finishes while the agent has not reported.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    assert_eq!(
        api.get("s1").await.unwrap().status.unwrap().phase,
        SessionPhase::Running
    );

    finish_retention(&client, "team", "s1", ItemPhase::Succeeded, None).await;
    let st = session_where(&client, "s1", "the final phase", |st| {
        st.phase.is_finished()
    })
    .await;
    assert_eq!(st.phase, SessionPhase::PartiallyFailed);
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "RetentionRunning")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Succeeded")
    );
    assert!(
        c.message.contains("4 snapshot(s) kept, 2 removed"),
        "{}",
        c.message
    );
    assert!(!st.conditions.iter().any(|c| c.type_ == "RetentionFailed"));
    let repo = Api::<Repository>::namespaced(client.clone(), "team")
        .get("main")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(repo.snapshot_count, Some(12));
    assert_eq!(repo.total_size, Some(123_456_789));
    assert!(repo.last_backup_time.is_some());

    // Every item failed: no retention run, the session fails at once.
    backup_session(&client, "team", "s2", "db").await;
    let st = session_where(&client, "s2", "items", |st| !st.items.is_empty()).await;
    for (i, item) in st.items.iter().enumerate() {
        finish_item(&client, "team", "s2", i, item, ItemPhase::Failed).await;
    }
    let st = session_where(&client, "s2", "the final phase", |st| {
        st.phase.is_finished()
    })
    .await;
    assert_eq!(st.phase, SessionPhase::Failed);
    assert!(st.retention.is_none());
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn a_failed_or_timed_out_retention_is_reported_without_changing_the_phase() {
    let (_env, client) = control_plane().await;
    setup(&client, Some("8s")).await;
    let (shutdown, handle, _m) = start_controller(&client, settings());

    backup_session(&client, "team", "s1", "db").await;
    let st = session_where(&client, "s1", "items", |st| !st.items.is_empty()).await;
    for (i, item) in st.items.iter().enumerate() {
        finish_item(&client, "team", "s1", i, item, ItemPhase::Succeeded).await;
    }
    assert_eq!(
        wait_retention_pending(&client, "team", "s1").await,
        "node-a"
    );
    finish_retention(
        &client,
        "team",
        "s1",
        ItemPhase::Failed,
        Some("repository is locked by another process"),
    )
    .await;
    let st = session_where(&client, "s1", "the final phase", |st| {
        st.phase.is_finished()
    })
    .await;
    assert_eq!(
        st.phase,
        SessionPhase::Succeeded,
        "retention does not change the phase"
    );
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "RetentionFailed")
        .expect("a RetentionFailed condition");
    assert_eq!(c.status, "True");
    assert!(c.message.contains("repository is locked"), "{}", c.message);
    let events = Api::<Event>::namespaced(client.clone(), "team");
    eventually(Duration::from_secs(10), "a RetentionFailed event", || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("RetentionFailed")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("s1")
                })
        }
    })
    .await;
    let repo = Api::<Repository>::namespaced(client.clone(), "team")
        .get("main")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(repo.snapshot_count, None, "no figures from a failed run");
    assert!(
        repo.last_backup_time.is_some(),
        "the backups themselves succeeded"
    );

    // Nobody claims the retention of s2: the configuration's timeout ends it.
    backup_session(&client, "team", "s2", "db").await;
    let st = session_where(&client, "s2", "items", |st| !st.items.is_empty()).await;
    for (i, item) in st.items.iter().enumerate() {
        finish_item(&client, "team", "s2", i, item, ItemPhase::Succeeded).await;
    }
    wait_retention_pending(&client, "team", "s2").await;
    let st = session_where(&client, "s2", "the timeout to end the retention", |st| {
        st.phase.is_finished()
    })
    .await;
    assert_eq!(st.phase, SessionPhase::Succeeded);
    let r = st.retention.unwrap();
    assert_eq!(r.phase, ItemPhase::Failed);
    assert!(r.error.unwrap().starts_with("timed out"));
    assert!(st.conditions.iter().any(|c| c.type_ == "RetentionFailed"));
    stop_controller(shutdown, handle).await;
}
