//! Scheduled checks (`Repository.spec.check`): the controller asks for runs
//! (schedule ticks and the `stash.rs/check-now` annotation), labels the
//! Repository for the agents, expires runs nobody finishes, and records the
//! result in the status, an Event and its metrics. The agent's side is
//! played here with the JSON patches agents send.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use stash_api::check::{CHECK_LABEL, CHECK_NOW};
use stash_api::{ItemPhase, Repository};

use crate::common::*;

async fn annotate(api: &Api<Repository>, name: &str, value: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {CHECK_NOW: value}}})),
    )
    .await
    .unwrap();
}

/// Waits for the Repository's check run to be in `phase`, and returns it.
async fn run_becomes(api: &Api<Repository>, name: &str, phase: ItemPhase) -> Repository {
    eventually(
        Duration::from_secs(30),
        &format!("the check run of {name} to be {phase:?}"),
        || async {
            let r = api.get(name).await.ok()?;
            let run = r.status.as_ref()?.check.as_ref()?;
            (run.phase == phase).then_some(r)
        },
    )
    .await
}

async fn labelled(api: &Api<Repository>, name: &str, want: bool) {
    eventually(
        Duration::from_secs(30),
        &format!("{name} labelled {CHECK_LABEL}: {want}"),
        || async {
            let r = api.get(name).await.ok()?;
            (r.labels().contains_key(CHECK_LABEL) == want).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn checks_are_asked_for_claimed_recorded_and_expired() {
    let (_env, client) = control_plane().await;
    namespace(&client, "vault", &[]).await;
    repository(&client, "vault", "main", None).await;
    let api: Api<Repository> = Api::namespaced(client.clone(), "vault");
    // A schedule far away and a timeout of 3 s (for the expiry below).
    api.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"check": {
            "schedule": "0 3 1 1 *", "readDataSubset": "1/30", "timeout": "3s"}}})),
    )
    .await
    .unwrap();
    let (shutdown, handle, metrics) = start_controller(&client, settings());

    // Nothing is asked for before the first tick.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = api.get("main").await.unwrap();
    assert!(r.status.as_ref().and_then(|s| s.check.as_ref()).is_none());
    assert!(!r.labels().contains_key(CHECK_LABEL));

    // A request: one Pending run, and the label the agents watch.
    annotate(&api, "main", "first").await;
    let r = run_becomes(&api, "main", ItemPhase::Pending).await;
    let run = r.status.unwrap().check.unwrap();
    assert_eq!(run.request.as_deref(), Some("first"));
    assert_eq!(run.read_data_subset.as_deref(), Some("1/30"));
    let scheduled = serde_json::to_value(run.scheduled_time.clone().unwrap()).unwrap();
    labelled(&api, "main", true).await;

    // An agent claims it (the claim names the run) and finds damage.
    let base = "/status/check";
    let claim = json!([
        {"op": "test", "path": format!("{base}/scheduledTime"), "value": scheduled},
        {"op": "test", "path": format!("{base}/phase"), "value": "Pending"},
        {"op": "add", "path": format!("{base}/phase"), "value": "Running"},
        {"op": "add", "path": format!("{base}/claimedBy"), "value": "node-a/agent/1"},
        {"op": "add", "path": format!("{base}/heartbeatTime"), "value": timestamp_ago(Duration::ZERO)},
    ]);
    agent_patch(&client, "repositories", "vault", "main", claim.clone())
        .await
        .unwrap();
    // A second agent racing for it loses.
    assert_eq!(
        agent_patch(&client, "repositories", "vault", "main", claim).await,
        Err(422)
    );
    let finish = json!([
        {"op": "test", "path": format!("{base}/claimedBy"), "value": "node-a/agent/1"},
        {"op": "add", "path": format!("{base}/phase"), "value": "Failed"},
        {"op": "add", "path": format!("{base}/errorCount"), "value": 1},
        {"op": "add", "path": format!("{base}/error"), "value": "the repository contains 1 error(s): pack 0123abcd: hash mismatch"},
        {"op": "add", "path": format!("{base}/endTime"), "value": timestamp_ago(Duration::ZERO)},
    ]);
    agent_patch(&client, "repositories", "vault", "main", finish)
        .await
        .unwrap();
    let r = eventually(
        Duration::from_secs(30),
        "the failed check recorded",
        || async {
            let r = api.get("main").await.ok()?;
            (r.status.as_ref()?.last_check_result.as_deref() == Some("Failed")).then_some(r)
        },
    )
    .await;
    let st = r.status.unwrap();
    assert_eq!(st.last_check_time, st.check.as_ref().unwrap().end_time);
    labelled(&api, "main", false).await;
    let events = eventually(Duration::from_secs(10), "a CheckFailed Event", || async {
        let ev = events_of(&client, "vault", "main").await;
        ev.iter()
            .any(|(t, reason, note)| {
                t == "Warning" && reason == "CheckFailed" && note.contains("pack 0123abcd")
            })
            .then_some(ev)
    })
    .await;
    assert!(!events.is_empty());
    let text = metrics.render();
    assert!(
        text.contains(
            r#"stash_controller_repository_check_passed{namespace="vault",repository="main"} 0"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"stash_controller_repository_last_check_timestamp_seconds{namespace="vault",repository="main"}"#),
        "{text}"
    );

    // The same request value again asks for nothing; a new one does. No
    // agent takes it: it fails after its timeout (3 s), saying why.
    annotate(&api, "main", "first").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.get("main")
            .await
            .unwrap()
            .status
            .unwrap()
            .check
            .unwrap()
            .phase,
        ItemPhase::Failed
    );
    annotate(&api, "main", "second").await;
    let r = eventually(
        Duration::from_secs(30),
        "the unclaimed run to expire",
        || async {
            let r = api.get("main").await.ok()?;
            let run = r.status.as_ref()?.check.as_ref()?;
            (run.request.as_deref() == Some("second") && run.phase == ItemPhase::Failed)
                .then_some(r)
        },
    )
    .await;
    let run = r.status.unwrap().check.unwrap();
    assert!(
        run.error.as_deref().unwrap_or("").contains("no agent took"),
        "{run:?}"
    );
    // The old run's fields went with it.
    assert_eq!(run.error_count, None, "{run:?}");
    labelled(&api, "main", false).await;

    // A claimed run past its timeout is failed and its claim revoked: the
    // agent's next heartbeat (testing its claim) is refused.
    annotate(&api, "main", "third").await;
    let r = eventually(Duration::from_secs(30), "the third run", || async {
        let r = api.get("main").await.ok()?;
        let run = r.status.as_ref()?.check.as_ref()?;
        (run.request.as_deref() == Some("third") && run.phase == ItemPhase::Pending).then_some(r)
    })
    .await;
    let scheduled = serde_json::to_value(r.status.unwrap().check.unwrap().scheduled_time).unwrap();
    agent_patch(
        &client,
        "repositories",
        "vault",
        "main",
        json!([
            {"op": "test", "path": format!("{base}/scheduledTime"), "value": scheduled},
            {"op": "test", "path": format!("{base}/phase"), "value": "Pending"},
            {"op": "add", "path": format!("{base}/phase"), "value": "Running"},
            {"op": "add", "path": format!("{base}/claimedBy"), "value": "node-b/agent/1"},
        ]),
    )
    .await
    .unwrap();
    let r = eventually(
        Duration::from_secs(30),
        "the claimed run to expire",
        || async {
            let r = api.get("main").await.ok()?;
            let run = r.status.as_ref()?.check.as_ref()?;
            (run.request.as_deref() == Some("third") && run.phase == ItemPhase::Failed).then_some(r)
        },
    )
    .await;
    let run = r.status.unwrap().check.unwrap();
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("did not finish"),
        "{run:?}"
    );
    assert_eq!(run.claim.claimed_by, None);
    let heartbeat = json!([
        {"op": "test", "path": format!("{base}/claimedBy"), "value": "node-b/agent/1"},
        {"op": "add", "path": format!("{base}/heartbeatTime"), "value": timestamp_ago(Duration::ZERO)},
    ]);
    let refused = agent_patch(&client, "repositories", "vault", "main", heartbeat).await;
    assert!(matches!(refused, Err(400 | 422)), "{refused:?}");

    // A tenant's label alone makes the controller take it off again.
    api.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {CHECK_LABEL: "unfinished"}}})),
    )
    .await
    .unwrap();
    labelled(&api, "main", false).await;
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn a_schedule_tick_starts_a_run() {
    let (_env, client) = control_plane().await;
    namespace(&client, "tick", &[]).await;
    repository(&client, "tick", "main", None).await;
    let api: Api<Repository> = Api::namespaced(client.clone(), "tick");
    // Every 2 seconds (six fields, seconds first).
    api.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"check": {"schedule": "*/2 * * * * *"}}})),
    )
    .await
    .unwrap();
    let (shutdown, handle, _) = start_controller(&client, settings());
    let r = run_becomes(&api, "main", ItemPhase::Pending).await;
    let st = r.status.unwrap();
    let run = st.check.unwrap();
    assert_eq!(run.trigger, Some(stash_api::check::CheckTrigger::Schedule));
    assert_eq!(st.last_check_schedule_time, run.scheduled_time);
    assert_eq!(run.read_data_subset, None);
    // Later ticks wait for the unfinished run (it has the default 6 h).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = api
        .get("main")
        .await
        .unwrap()
        .status
        .unwrap()
        .check
        .unwrap();
    assert_eq!(again.scheduled_time, run.scheduled_time);
    stop_controller(shutdown, handle).await;
}
