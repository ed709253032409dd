//! Issue 6, "What must hold" 3: a cross-namespace Repository reference that
//! the Repository's policy does not admit is refused with a condition, and
//! nothing is scheduled; a session made by hand fails with the same reason.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use stash_api::{BackupConfiguration, BackupSession, SessionPhase};
use stash_controller::Settings;

use crate::common::*;

#[tokio::test]
async fn cross_namespace_repository_is_refused_with_a_condition() {
    let (_env, client) = control_plane().await;
    namespace(&client, "infra", &[]).await;
    namespace(&client, "team", &[("backup", "yes")]).await;
    repository(&client, "infra", "shared", None).await;
    db_pod(&client, "team", "db-0", "node-a").await;

    let (shutdown, controller, metrics) = start_controller(&client, Settings::new("test"));

    configuration(
        &client,
        "team",
        "db",
        json!({
            "schedule": "*/2 * * * * *",
            "target": {"selector": {"matchLabels": {"app": "db"}}},
            "repository": {"name": "shared", "namespace": "infra"},
        }),
    )
    .await;
    let configs: Api<BackupConfiguration> = Api::namespaced(client.clone(), "team");
    let message = eventually(
        Duration::from_secs(15),
        "a RepositoryNotAllowed condition",
        || {
            let configs = configs.clone();
            async move {
                let cfg = configs.get("db").await.unwrap();
                let c = cfg
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                (c.status == "False" && c.reason == "RepositoryNotAllowed").then_some(c.message)
            }
        },
    )
    .await;
    assert!(
        message.contains("may not use Repository infra/shared")
            && message.contains("does not admit namespace team"),
        "unclear refusal: {message}"
    );
    // Several ticks pass; nothing is scheduled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        sessions(&client, "team").await.is_empty(),
        "a refused configuration was scheduled"
    );
    assert_eq!(metrics.sessions_created.get(), 0);

    // An on-demand session for it fails with the same reason.
    let manual: BackupSession = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
        "metadata": {"name": "by-hand", "namespace": "team"},
        "spec": {"backupConfiguration": "db"},
    }))
    .unwrap();
    let api: Api<BackupSession> = Api::namespaced(client.clone(), "team");
    api.create(&PostParams::default(), &manual).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the manual session to fail as not allowed",
        || {
            let api = api.clone();
            async move {
                let st = api.get("by-hand").await.unwrap().status?;
                let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
                (st.phase == SessionPhase::Failed
                    && c.reason == "RepositoryNotAllowed"
                    && st.items.is_empty())
                .then_some(())
            }
        },
    )
    .await;

    // Once the Repository admits namespaces labelled backup=yes, the
    // configuration is scheduled (touch it to skip the 30 s recheck).
    Api::<stash_api::Repository>::namespaced(client.clone(), "infra")
        .patch("shared", &PatchParams::default(), &Patch::Merge(json!({"spec": {"usagePolicy": {"allowedNamespaces": {"from": "Selector", "selector": {"matchLabels": {"backup": "yes"}}}}}})))
        .await
        .unwrap();
    configs
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(15), "a session once admitted", || {
        let client = client.clone();
        async move {
            sessions(&client, "team")
                .await
                .iter()
                .any(|s| s.metadata.name.as_deref() != Some("by-hand"))
                .then_some(())
        }
    })
    .await;

    stop_controller(shutdown, controller).await;
}
