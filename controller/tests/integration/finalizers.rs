//! Finalizers: a BackupConfiguration deleted while a session runs stays
//! until the session is finished; a Repository in use stays until no
//! configuration refers to it.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use serde_json::json;
use stash_api::{BackupConfiguration, BackupSession, ItemPhase, Repository, SessionPhase};

use crate::common::*;

#[tokio::test]
async fn deletion_waits_for_running_sessions_and_repository_users() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    repository(&client, "team", "main", None).await;
    db_pod(&client, "team", "db-0", "node-a").await;
    configuration(&client, "team", "db", db_spec(json!({}))).await;
    let (shutdown, handle, _m) = start_controller(&client, settings());
    let configs: Api<BackupConfiguration> = Api::namespaced(client.clone(), "team");
    let repos: Api<Repository> = Api::namespaced(client.clone(), "team");
    eventually(Duration::from_secs(20), "both finalizers", || {
        let (configs, repos) = (configs.clone(), repos.clone());
        async move {
            let c = configs.get("db").await.ok()?;
            let r = repos.get("main").await.ok()?;
            (c.metadata.finalizers? == ["stash.rs/sessions"]
                && r.metadata.finalizers? == ["stash.rs/in-use"])
            .then_some(())
        }
    })
    .await;
    backup_session(&client, "team", "s1", "db").await;
    let sessions: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    let items = eventually(Duration::from_secs(20), "items", || {
        let sessions = sessions.clone();
        async move {
            let st = sessions.get("s1").await.ok()?.status?;
            (!st.items.is_empty()).then_some(st.items)
        }
    })
    .await;

    configs
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    repos
        .delete("main", &DeleteParams::default())
        .await
        .unwrap();
    let message = ready_message(&configs, "db", "Terminating").await;
    assert!(
        message.contains("waiting for session(s) s1 to finish"),
        "{message}"
    );
    let message = ready_message(&repos, "main", "InUse").await;
    assert!(message.contains("BackupConfiguration team/db"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(configs.get_opt("db").await.unwrap().is_some());
    assert!(repos.get_opt("main").await.unwrap().is_some());
    assert_eq!(
        sessions.get("s1").await.unwrap().status.unwrap().phase,
        SessionPhase::Running,
        "the running session goes on"
    );

    // The agent finishes: the session ends, then the configuration, then
    // the Repository go.
    finish_item(&client, "team", "s1", 0, &items[0], ItemPhase::Succeeded).await;
    wait_retention_pending(&client, "team", "s1").await;
    finish_retention(&client, "team", "s1", ItemPhase::Succeeded, None).await;
    eventually(
        Duration::from_secs(30),
        "configuration and Repository gone",
        || {
            let (configs, repos) = (configs.clone(), repos.clone());
            async move {
                (configs.get_opt("db").await.unwrap().is_none()
                    && repos.get_opt("main").await.unwrap().is_none())
                .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        sessions.get("s1").await.unwrap().status.unwrap().phase,
        SessionPhase::Succeeded
    );
    stop_controller(shutdown, handle).await;
}

/// Issue 12, hole 8: a BackupConfiguration (and a RestoreSession) in a
/// namespace the Repository does not admit names it; that never made the
/// Repository usable from there, so it must not hold its deletion either.
/// A configuration in an admitted namespace still does.
#[tokio::test]
async fn references_from_namespaces_a_repository_does_not_admit_do_not_block_its_deletion() {
    let (_env, client) = control_plane().await;
    namespace(&client, "infra", &[]).await;
    namespace(&client, "attacker", &[]).await;
    namespace(&client, "friend", &[("backup", "yes")]).await;
    repository(
        &client,
        "infra",
        "shared",
        Some(json!({"allowedNamespaces": {"from": "Selector",
                     "selector": {"matchLabels": {"backup": "yes"}}}})),
    )
    .await;
    let spec = json!({"schedule": "0 0 1 1 *", "target": {"selector": {"matchLabels": {"app": "db"}}},
                      "repository": {"name": "shared", "namespace": "infra"}});
    configuration(&client, "attacker", "squat", spec.clone()).await;
    let restore: stash_api::RestoreSession = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
        "metadata": {"name": "squat", "namespace": "attacker"},
        "spec": {"repository": {"name": "shared", "namespace": "infra"},
                 "target": {"persistentVolumeClaim": "data"}}}))
    .unwrap();
    Api::<stash_api::RestoreSession>::namespaced(client.clone(), "attacker")
        .create(&Default::default(), &restore)
        .await
        .unwrap();
    let (shutdown, handle, _m) = start_controller(&client, settings());
    let repos: Api<Repository> = Api::namespaced(client.clone(), "infra");
    eventually(Duration::from_secs(20), "the in-use finalizer", || {
        let repos = repos.clone();
        async move {
            let r = repos.get("shared").await.ok()?;
            (r.metadata.finalizers? == ["stash.rs/in-use"]).then_some(())
        }
    })
    .await;

    // An admitted namespace's configuration holds the deletion...
    configuration(&client, "friend", "db", spec).await;
    repos
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    let message = ready_message(&repos, "shared", "InUse").await;
    assert!(
        message.contains("BackupConfiguration friend/db"),
        "{message}"
    );
    assert!(!message.contains("attacker"), "{message}");

    // ...and once it goes, the attacker's references do not.
    Api::<BackupConfiguration>::namespaced(client.clone(), "friend")
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "Repository gone", || {
        let repos = repos.clone();
        async move {
            repos
                .get_opt("shared")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    shutdown.cancel();
    handle.await.unwrap();
}
