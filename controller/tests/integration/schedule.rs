//! Issue 6, "What must hold" 1: a BackupConfiguration with a schedule of
//! every few seconds produces BackupSessions on time, with items for exactly
//! the opted-in volumes, each on the right node; then Forbid holds ticks
//! back while sessions run, and finished items finish the session.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use stash_api::{BackupSession, ItemPhase, Repository, SessionPhase};
use stash_controller::Settings;

use crate::common::*;

fn to_chrono(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.0.as_millisecond()).unwrap()
}

#[tokio::test]
async fn schedule_creates_sessions_on_time_with_the_opted_in_volumes() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    repository(&client, "team", "main", None).await;
    let opt = "stash.rs/backup-volumes";
    pod(
        &client,
        "team",
        "db-0",
        "node-a",
        &[("app", "db")],
        &[(opt, "data,logs")],
        &["data", "logs", "cache"],
    )
    .await;
    pod(
        &client,
        "team",
        "db-1",
        "node-b",
        &[("app", "db")],
        &[
            (opt, "data, cache"),
            ("stash.rs/backup-volumes-excludes", "cache"),
        ],
        &["data", "cache"],
    )
    .await;
    pod(
        &client,
        "team",
        "db-2",
        "node-b",
        &[("app", "db")],
        &[],
        &["data"],
    )
    .await;
    pod(
        &client,
        "team",
        "web-0",
        "node-a",
        &[("app", "web")],
        &[(opt, "data")],
        &["data"],
    )
    .await;

    let (shutdown, controller, metrics) = start_controller(&client, Settings::new("test"));

    configuration(
        &client,
        "team",
        "db",
        json!({
            "schedule": "*/3 * * * * *",
            "target": {"selector": {"matchLabels": {"app": "db"}}},
            "repository": {"name": "main"},
            "concurrencyPolicy": "Allow",
        }),
    )
    .await;

    let list = eventually(
        Duration::from_secs(30),
        "3 BackupSessions with items",
        || {
            let client = client.clone();
            async move {
                let list = sessions(&client, "team").await;
                let resolved = list
                    .iter()
                    .filter(|s| s.status.as_ref().is_some_and(|st| !st.items.is_empty()))
                    .count();
                (list.len() >= 3 && resolved == list.len()).then_some(list)
            }
        },
    )
    .await;

    let mut ticks = BTreeSet::new();
    for s in &list {
        let name = s.metadata.name.clone().unwrap();
        let tick = to_chrono(s.spec.scheduled_time.as_ref().expect("scheduledTime"));
        assert_eq!(
            tick.timestamp() % 3,
            0,
            "{name}: tick {tick} is not on the */3 schedule"
        );
        assert_eq!(name, format!("db-{}", tick.timestamp()));
        assert!(ticks.insert(tick), "two sessions for tick {tick}");
        // creationTimestamp has whole seconds: created within the tick's second or the next.
        let created = to_chrono(s.metadata.creation_timestamp.as_ref().unwrap());
        let late = created - tick;
        assert!(
            late <= chrono::Duration::seconds(1),
            "{name} created {late} after its tick"
        );

        let st = s.status.as_ref().unwrap();
        assert_eq!(st.phase, SessionPhase::Running, "{name}");
        assert_eq!(st.progress.as_deref(), Some("0/3"), "{name}");
        let items: BTreeSet<(&str, &str, &str)> = st
            .items
            .iter()
            .map(|i| {
                assert_eq!(i.common.phase, ItemPhase::Pending);
                (
                    i.common.pod.as_str(),
                    i.common.volume.as_str(),
                    i.common.node.as_deref().unwrap_or("-"),
                )
            })
            .collect();
        assert_eq!(
            items,
            BTreeSet::from([
                ("db-0", "data", "node-a"),
                ("db-0", "logs", "node-a"),
                ("db-1", "data", "node-b")
            ]),
            "{name}: items must be exactly the opted-in volumes on their pods' nodes"
        );
    }
    // Every tick to session took under a second.
    let latency = metrics.schedule_latency.clone();
    assert!(latency.get_sample_count() >= 3);
    let text = metrics.render();
    let within_1s = text
        .lines()
        .find(|l| l.starts_with("stash_controller_schedule_latency_seconds_bucket{le=\"1\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a le=1 bucket");
    assert_eq!(
        within_1s,
        latency.get_sample_count(),
        "some sessions came later than 1 s after their tick:\n{text}"
    );

    // Forbid: while sessions run, ticks are skipped.
    let configs: Api<stash_api::BackupConfiguration> = Api::namespaced(client.clone(), "team");
    configs
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"concurrencyPolicy": "Forbid"}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sessions(&client, "team").await.len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        sessions(&client, "team").await.len(),
        before,
        "Forbid let a tick through while sessions run"
    );
    assert!(
        metrics
            .ticks_skipped
            .with_label_values(&["team", "db"])
            .get()
            >= 2
    );

    // The agents finish the items of one session; the agent of the first
    // item's node runs the retention; then it succeeds, and the Repository
    // records the backup.
    let api: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    let first = list[0].metadata.name.clone().unwrap();
    for (i, item) in list[0].status.as_ref().unwrap().items.iter().enumerate() {
        finish_item(&client, "team", &first, i, item, ItemPhase::Succeeded).await;
    }
    let node = wait_retention_pending(&client, "team", &first).await;
    assert_eq!(node, "node-a");
    finish_retention(&client, "team", &first, ItemPhase::Succeeded, None).await;
    eventually(Duration::from_secs(10), "the session to succeed", || {
        let api = api.clone();
        let first = first.clone();
        async move {
            let s = api.get(&first).await.unwrap();
            let st = s.status.unwrap();
            (st.phase == SessionPhase::Succeeded && st.progress.as_deref() == Some("3/3"))
                .then_some(())
        }
    })
    .await;
    let repo = Api::<Repository>::namespaced(client.clone(), "team")
        .get("main")
        .await
        .unwrap();
    assert!(
        repo.status.and_then(|s| s.last_backup_time).is_some(),
        "Repository status has no lastBackupTime"
    );

    stop_controller(shutdown, controller).await;
}
