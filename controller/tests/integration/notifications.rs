//! Notifications of finished sessions reach real HTTP receivers on
//! loopback in each format, once, retried through failures; a receiver on
//! a cloud-metadata address is refused before any connection, and the
//! session's `Notified` condition says what happened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use stash_api::{BackupSession, ItemPhase, SessionPhase};

use crate::common::*;

/// What a receiver saw: path, `Authorization` header, body.
type Seen = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

/// Receivers under `/{name}`; `/flaky` answers 503 to its first two calls.
async fn receivers() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let flaky = Arc::new(Mutex::new(0u32));
    let app = Router::new()
        .route(
            "/{name}",
            post(
                |State((seen, flaky)): State<(Seen, Arc<Mutex<u32>>)>,
                 Path(name): Path<String>,
                 headers: HeaderMap,
                 body: String| async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().push((name.clone(), auth, body));
                    if name == "flaky" {
                        let mut n = flaky.lock().unwrap();
                        *n += 1;
                        if *n <= 2 {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    StatusCode::OK
                },
            ),
        )
        .with_state((seen.clone(), flaky));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn calls(seen: &Seen, name: &str) -> Vec<(Option<String>, Value)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, a, b)| (a.clone(), b.clone()))
        .collect()
}

#[tokio::test]
async fn outcomes_reach_webhook_slack_and_alertmanager_once_and_metadata_is_refused() {
    let (_env, client) = control_plane().await;
    let (base, seen) = receivers().await;
    let ns = "team";
    namespace(&client, ns, &[]).await;
    repository(&client, ns, "main", None).await;
    let slack: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "slack", "namespace": ns},
        "stringData": {"url": format!("{base}/slack"), "header.Authorization": "Bearer s3cret"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slack)
        .await
        .unwrap();
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        db_pod(&client, ns, &format!("db-{i}"), node).await;
    }
    let spec = db_spec(json!({
        "notifications": [
            {"name": "hook", "format": "Webhook", "url": format!("{base}/hook"),
             "on": ["Succeeded", "PartiallyFailed", "Failed"]},
            {"name": "chat", "format": "Slack", "secret": "slack"},
            {"name": "am", "format": "Alertmanager", "url": format!("{base}/am")},
            {"name": "flaky", "format": "Webhook", "url": format!("{base}/flaky")},
            {"name": "metadata", "format": "Webhook", "url": "http://169.254.169.254/latest/meta-data/"},
            {"name": "only-success", "format": "Webhook", "url": format!("{base}/only-success"), "on": ["Succeeded"]},
        ],
    }));
    configuration(&client, ns, "db", spec).await;
    // A configuration whose target matches no pod: its session fails at once.
    configuration(
        &client,
        ns,
        "ghost",
        json!({
            "schedule": "0 0 1 1 *",
            "target": {"selector": {"matchLabels": {"app": "nothing"}}},
            "repository": {"name": "main"},
            "notifications": [{"name": "hook", "format": "Webhook", "url": format!("{base}/ghost")}],
        }),
    )
    .await;
    let (shutdown, handle, metrics) = start_controller(&client, settings());

    backup_session(&client, ns, "ghost-1", "ghost").await;
    backup_session(&client, ns, "s1", "db").await;
    let api: Api<BackupSession> = Api::namespaced(client.clone(), ns);
    let items = eventually(Duration::from_secs(20), "items", || {
        let api = api.clone();
        async move {
            let st = api.get("s1").await.ok()?.status?;
            (!st.items.is_empty()).then_some(st.items)
        }
    })
    .await;
    finish_item(&client, ns, "s1", 0, &items[0], ItemPhase::Succeeded).await;
    finish_item(&client, ns, "s1", 1, &items[1], ItemPhase::Failed).await;
    wait_retention_pending(&client, ns, "s1").await;
    finish_retention(&client, ns, "s1", ItemPhase::Succeeded, None).await;

    // The session ends PartiallyFailed, and says who was told.
    let notified = eventually(Duration::from_secs(30), "the Notified condition", || {
        let api = api.clone();
        async move {
            let st = api.get("s1").await.ok()?.status?;
            st.conditions.into_iter().find(|c| c.type_ == "Notified")
        }
    })
    .await;
    assert_eq!(notified.status, "False", "{notified:?}");
    assert_eq!(notified.reason, "NotDelivered");
    assert!(
        notified
            .message
            .contains("metadata: refused: 169.254.169.254")
            && notified.message.contains("link-local"),
        "{}",
        notified.message
    );
    assert!(
        !notified.message.contains("hook:") && !notified.message.contains("flaky:"),
        "the others were delivered: {}",
        notified.message
    );

    let hook = calls(&seen, "hook");
    assert_eq!(hook.len(), 1, "{hook:?}");
    let doc = &hook[0].1;
    assert_eq!(doc["kind"], "BackupSession");
    assert_eq!(doc["namespace"], ns);
    assert_eq!(doc["name"], "s1");
    assert_eq!(doc["configuration"], "db");
    assert_eq!(doc["phase"], "PartiallyFailed");
    let doc_items = doc["items"].as_array().unwrap();
    assert_eq!(doc_items.len(), 2);
    assert!(doc_items
        .iter()
        .any(|i| i["phase"] == "Failed" && i["error"] == "disk on fire"));
    assert!(doc_items
        .iter()
        .any(|i| i["phase"] == "Succeeded" && i["snapshotId"].is_string()));
    assert_eq!(
        doc["object"],
        "/apis/stash.rs/v1alpha1/namespaces/team/backupsessions/s1"
    );

    let chat = calls(&seen, "slack");
    assert_eq!(chat.len(), 1, "{chat:?}");
    assert_eq!(chat[0].0.as_deref(), Some("Bearer s3cret"));
    let text = chat[0].1["text"].as_str().unwrap();
    assert!(
        text.contains("Backup team/db PartiallyFailed")
            && text.contains("1 of 2 volume(s) failed")
            && text.contains("disk on fire"),
        "{text}"
    );

    let am = calls(&seen, "am");
    assert_eq!(am.len(), 1, "{am:?}");
    let alert = &am[0].1[0];
    assert_eq!(alert["labels"]["alertname"], "StashBackupFailed");
    assert_eq!(alert["labels"]["namespace"], ns);
    assert_eq!(alert["labels"]["configuration"], "db");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert!(alert["startsAt"].is_string() && alert["endsAt"].is_string());

    // Retried through two 503s: three calls, delivered.
    assert_eq!(calls(&seen, "flaky").len(), 3);
    // Asked for successes only: not told of a partial failure.
    assert!(calls(&seen, "only-success").is_empty());

    // The session that could not start was announced too.
    eventually(Duration::from_secs(20), "the ghost session's call", || {
        let seen = seen.clone();
        async move {
            let c = calls(&seen, "ghost");
            (c.len() == 1
                && c[0].1["phase"] == "Failed"
                && c[0].1["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("nothing to back up"))
            .then_some(())
        }
    })
    .await;
    let ghost = api.get("ghost-1").await.unwrap().status.unwrap();
    assert_eq!(ghost.phase, SessionPhase::Failed);

    // A restarted controller does not tell anyone twice.
    stop_controller(shutdown, handle).await;
    let (shutdown, handle, _) = start_controller(&client, settings());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls(&seen, "hook").len(), 1);
    assert_eq!(calls(&seen, "ghost").len(), 1);
    stop_controller(shutdown, handle).await;

    let rendered = metrics.render();
    assert!(
        rendered.contains(
            "stash_controller_notifications_total{format=\"webhook\",result=\"failed\"} 1"
        ),
        "{rendered}"
    );
}

/// Issue 17: a configuration with no successful backup for twice its
/// schedule's interval gets the `Stale` condition and one notification per
/// receiver asking for `Stale`, in each format, even though nothing it
/// could back up exists; and only one, however often it is reconciled.
#[tokio::test]
async fn a_configuration_without_a_recent_success_goes_stale_once() {
    let (_env, client) = control_plane().await;
    let (base, seen) = receivers().await;
    let ns = "lapsed";
    namespace(&client, ns, &[]).await;
    repository(&client, ns, "main", None).await;
    configuration(
        &client,
        ns,
        "gone",
        json!({
            // Every 2 s: stale 4 s after creation, as no session can succeed.
            "schedule": "*/2 * * * * *",
            "target": {"selector": {"matchLabels": {"app": "nothing"}}},
            "repository": {"name": "main"},
            "notifications": [
                {"name": "hook", "format": "Webhook", "url": format!("{base}/hook"), "on": ["Stale"]},
                {"name": "chat", "format": "Slack", "url": format!("{base}/chat"), "on": ["Stale"]},
                {"name": "am", "format": "Alertmanager", "url": format!("{base}/am"), "on": ["Stale"]},
                {"name": "failures", "format": "Webhook", "url": format!("{base}/failures"), "on": ["Failed"]},
            ],
        }),
    )
    .await;
    let (shutdown, handle, _) = start_controller(&client, settings());
    let configs: Api<stash_api::BackupConfiguration> = Api::namespaced(client.clone(), ns);
    let cond = eventually(Duration::from_secs(30), "the Stale condition", || {
        let configs = configs.clone();
        async move {
            let st = configs.get("gone").await.ok()?.status?;
            st.conditions
                .into_iter()
                .find(|c| c.type_ == "Stale" && c.status == "True")
        }
    })
    .await;
    assert_eq!(cond.reason, "NoRecentSuccess");
    assert!(
        cond.message.contains("since the configuration was created"),
        "{}",
        cond.message
    );
    eventually(Duration::from_secs(30), "one call per receiver", || {
        let seen = seen.clone();
        async move {
            (["hook", "chat", "am"]
                .iter()
                .all(|r| !calls(&seen, r).is_empty()))
            .then_some(())
        }
    })
    .await;
    // Sessions keep failing (and are reconciled): still one call each.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for r in ["hook", "chat", "am"] {
        assert_eq!(calls(&seen, r).len(), 1, "{r}: {:?}", calls(&seen, r));
    }
    let (_, doc) = &calls(&seen, "hook")[0];
    assert_eq!(doc["phase"], "Stale", "{doc}");
    assert_eq!(doc["kind"], "BackupConfiguration");
    assert_eq!(doc["configuration"], "gone");
    assert_eq!(doc["scheduleIntervalSeconds"], 2);
    let (_, chat) = &calls(&seen, "chat")[0];
    let text = chat["text"].as_str().unwrap();
    assert!(
        text.starts_with("Backup lapsed/gone: no successful backup"),
        "{text}"
    );
    let (_, am) = &calls(&seen, "am")[0];
    assert_eq!(am[0]["labels"]["alertname"], "StashBackupMissing", "{am}");
    assert_eq!(am[0]["labels"]["configuration"], "gone");
    // The failures receiver hears of failed sessions, not of staleness.
    assert!(calls(&seen, "failures")
        .iter()
        .all(|(_, d)| d["kind"] == "BackupSession"));
    stop_controller(shutdown, handle).await;
}
