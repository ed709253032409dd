//! One stuck session must never stop a schedule: an item whose pod is gone
//! or whose node is NotReady fails after the grace, every session has a
//! deadline, and a skipped tick shows in the configuration's condition, its
//! Events and the metrics (issue 14, failure 1).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use stash_api::{BackupConfiguration, BackupSession, ItemPhase, SessionPhase};

use crate::common::*;

/// The grace the tests give a lost item.
const GRACE: Duration = Duration::from_secs(2);

fn short_grace() -> stash_controller::Settings {
    let mut s = settings();
    s.lost_item_grace = GRACE;
    s
}

/// A Node named `name` whose `Ready` condition is `ready` since now (there
/// is no kubelet: it stays as written).
async fn node(client: &Client, name: &str, ready: bool) {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(name).await.unwrap().is_none() {
        let n = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        api.create(&PostParams::default(), &n).await.unwrap();
    }
    let now = timestamp_ago(Duration::ZERO);
    let (status, reason) = if ready {
        ("True", "KubeletReady")
    } else {
        ("Unknown", "NodeStatusUnknown")
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{
            "type": "Ready", "status": status, "reason": reason,
            "message": "set by the test", "lastHeartbeatTime": now, "lastTransitionTime": now,
        }]}})),
    )
    .await
    .unwrap_or_else(|e| panic!("set node {name} ready={ready}: {e}"));
}

/// Namespace `team` with a Repository, Ready node `node-a`, pod `db-0` on
/// it opting in volume `data`, and configuration `db` on `schedule`.
async fn setup(client: &Client, schedule: &str) {
    let ns = "team";
    namespace(client, ns, &[]).await;
    repository(client, ns, "main", None).await;
    node(client, "node-a", true).await;
    db_pod(client, ns, "db-0", "node-a").await;
    configuration(
        client,
        ns,
        "db",
        json!({
            "schedule": schedule,
            "target": {"pod": "db-0"},
            "repository": {"name": "main"},
        }),
    )
    .await;
}

/// The first session of the schedule, once its item is resolved.
async fn first_running(client: &Client) -> BackupSession {
    eventually(
        Duration::from_secs(20),
        "a running session with items",
        || async {
            sessions(client, "team").await.into_iter().find(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.phase == SessionPhase::Running && !st.items.is_empty())
            })
        },
    )
    .await
}

/// Deletes pod `name` of `team` at once (there is no kubelet to wait for).
async fn delete_now(client: &Client, name: &str) {
    Api::<Pod>::namespaced(client.clone(), "team")
        .delete(
            name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
}

/// Waits for `name` to fail with its item failed for `reason`, then for the
/// schedule to create another session.
async fn fails_and_the_schedule_goes_on(client: &Client, name: &str, reason: &str) {
    let api: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    let st = eventually(
        Duration::from_secs(30),
        &format!("session {name} to fail with {reason}"),
        || {
            let api = api.clone();
            async move {
                let st = api.get(name).await.ok()?.status?;
                st.phase.is_finished().then_some(st)
            }
        },
    )
    .await;
    assert_eq!(st.phase, SessionPhase::Failed);
    let item = &st.items[0];
    assert_eq!(item.common.phase, ItemPhase::Failed);
    let error = item.common.error.as_deref().unwrap_or_default();
    assert!(error.starts_with(&format!("{reason}: ")), "{error}");
    // The Event is published after the status write: wait for it.
    eventually(
        Duration::from_secs(10),
        &format!("a Warning Event {reason} on {name}"),
        || async {
            events_of(client, "team", name)
                .await
                .iter()
                .any(|(t, r, _)| t == "Warning" && r == reason)
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the next tick's session",
        || async {
            sessions(client, "team")
                .await
                .iter()
                .any(|s| s.metadata.name.as_deref() != Some(name))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_item_whose_pod_is_gone_fails_and_the_next_tick_runs() {
    let (_env, client) = control_plane().await;
    setup(&client, "*/3 * * * * *").await;
    let (shutdown, handle, _metrics) = start_controller(&client, short_grace());
    let first = first_running(&client).await;
    let name = first.metadata.name.clone().unwrap();
    delete_now(&client, "db-0").await;
    fails_and_the_schedule_goes_on(&client, &name, "PodGone").await;
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn an_item_whose_pod_was_replaced_fails_as_pod_gone() {
    let (_env, client) = control_plane().await;
    setup(&client, "*/3 * * * * *").await;
    let (shutdown, handle, _metrics) = start_controller(&client, short_grace());
    let first = first_running(&client).await;
    let name = first.metadata.name.clone().unwrap();
    delete_now(&client, "db-0").await;
    // A StatefulSet's replacement: the same name, another UID.
    db_pod(&client, "team", "db-0", "node-a").await;
    fails_and_the_schedule_goes_on(&client, &name, "PodGone").await;
    let api: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    let error = api.get(&name).await.unwrap().status.unwrap().items[0]
        .common
        .error
        .clone()
        .unwrap();
    assert!(error.contains("was replaced"), "{error}");
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn an_item_on_a_not_ready_node_fails_and_the_next_tick_runs() {
    let (_env, client) = control_plane().await;
    setup(&client, "*/3 * * * * *").await;
    let (shutdown, handle, _metrics) = start_controller(&client, short_grace());
    let first = first_running(&client).await;
    let name = first.metadata.name.clone().unwrap();
    // Still Ready after more than the grace: the item waits for its agent.
    tokio::time::sleep(GRACE + Duration::from_secs(2)).await;
    let api: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    let st = api.get(&name).await.unwrap().status.unwrap();
    assert_eq!(st.items[0].common.phase, ItemPhase::Pending, "{st:?}");
    node(&client, "node-a", false).await;
    fails_and_the_schedule_goes_on(&client, &name, "NodeNotReady").await;
    stop_controller(shutdown, handle).await;
}

/// The raw status of a session, so the test reads fields its type may lack.
async fn raw_status(client: &Client, name: &str) -> serde_json::Value {
    let req = http::Request::get(format!(
        "/apis/stash.rs/v1alpha1/namespaces/team/backupsessions/{name}"
    ))
    .body(Vec::new())
    .unwrap();
    client
        .request::<serde_json::Value>(req)
        .await
        .unwrap()
        .get("status")
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_configuration_without_timeout_gets_the_default_deadline() {
    let (_env, client) = control_plane().await;
    // Every 6 hours: the default deadline is the interval, 6h.
    setup(&client, "0 */6 * * *").await;
    let (shutdown, handle, _metrics) = start_controller(&client, settings());
    backup_session(&client, "team", "manual", "db").await;
    let st = eventually(Duration::from_secs(20), "the session to start", || {
        let client = client.clone();
        async move {
            let st = raw_status(&client, "manual").await;
            st.get("startTime").is_some().then_some(st)
        }
    })
    .await;
    let time = |f: &str| {
        chrono::DateTime::parse_from_rfc3339(
            st[f]
                .as_str()
                .unwrap_or_else(|| panic!("status.{f} is missing: {st}")),
        )
        .unwrap()
    };
    assert_eq!(
        (time("deadline") - time("startTime")).num_seconds(),
        6 * 3600,
        "{st}"
    );
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn a_skipped_tick_shows_in_the_condition_the_event_and_the_metrics() {
    let (_env, client) = control_plane().await;
    setup(&client, "*/2 * * * * *").await;
    let (shutdown, handle, metrics) = start_controller(&client, settings());
    let first = first_running(&client).await;
    let name = first.metadata.name.clone().unwrap();
    let configs: Api<BackupConfiguration> = Api::namespaced(client.clone(), "team");
    let stuck = eventually(Duration::from_secs(20), "a Stuck condition", || {
        let configs = configs.clone();
        async move {
            let st = configs.get("db").await.ok()?.status?;
            st.conditions
                .into_iter()
                .find(|c| c.type_ == "Stuck" && c.status == "True")
        }
    })
    .await;
    assert_eq!(stuck.reason, "SessionStillRunning");
    assert!(
        stuck
            .message
            .contains(&format!("session {name} has run for")),
        "{}",
        stuck.message
    );
    assert!(stuck.message.contains("deadline"), "{}", stuck.message);
    // Events are published after the status write: wait for it.
    eventually(
        Duration::from_secs(10),
        "a Warning Event TickSkipped naming the running session",
        || async {
            events_of(&client, "team", "db")
                .await
                .iter()
                .any(|(t, r, n)| {
                    t == "Warning"
                        && r == "TickSkipped"
                        && n.contains(&format!("session {name} is still running"))
                })
                .then_some(())
        },
    )
    .await;
    let text = metrics.render();
    let skipped = text
        .lines()
        .find(|l| {
            l.starts_with("stash_controller_ticks_skipped_total{")
                && l.contains("configuration=\"db\"")
                && l.contains("namespace=\"team\"")
        })
        .unwrap_or_else(|| panic!("no labelled skipped-ticks metric in:\n{text}"));
    let n: f64 = skipped.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{skipped}");
    assert!(
        text.lines().any(
            |l| l.starts_with("stash_controller_oldest_running_session_age_seconds{")
                && l.contains("configuration=\"db\"")
        ),
        "no session age gauge in:\n{text}"
    );
    stop_controller(shutdown, handle).await;
}
