//! Issue 12, hole 9, in the controller's code: a rollout restore is refused
//! in its status unless the admin enabled rollout restores
//! (`--rollout-restores`), and always in the controller's own namespace;
//! neither refusal touches the workload. (The RBAC and the admission policy
//! that back this are tested in `deploy.rs`.)

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;
use stash_api::{RestoreSession, SessionPhase, LABEL_RESTORE_SESSION};

use crate::common::*;

fn deployment(name: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name},
                                              "annotations": {"stash.rs/backup-volumes": "cache"}},
                                 "spec": {"containers": [{"name": "c", "image": "busybox"}],
                                          "volumes": [{"name": "cache", "emptyDir": {}}]}}}})
}

/// Creates a rollout RestoreSession of Deployment `workload` in `ns` and
/// returns its final Ready condition's reason and message.
async fn refusal(client: &kube::Client, ns: &str, name: &str, workload: &str) -> (String, String) {
    create::<RestoreSession>(
        client,
        ns,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession", "metadata": {"name": name},
               "spec": {"repository": {"name": "main"}, "rollout": true,
                        "target": {"workload": {"kind": "Deployment", "name": workload}}}}),
    )
    .await;
    let api: Api<RestoreSession> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(30), "the refusal", || {
        let api = api.clone();
        async move {
            let st = api.get(name).await.ok()?.status?;
            if !st.phase.is_finished() {
                return None;
            }
            assert_eq!(st.phase, SessionPhase::Failed);
            let c = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            Some((c.reason, c.message))
        }
    })
    .await
}

/// Whether the Deployment's pod template carries the rollout's label.
async fn marked(client: &kube::Client, ns: &str, name: &str) -> bool {
    let d: Deployment = Api::namespaced(client.clone(), ns).get(name).await.unwrap();
    d.spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap_or_default()
        .contains_key(LABEL_RESTORE_SESSION)
}

#[tokio::test]
async fn rollout_restores_need_the_flag_and_never_touch_the_controllers_namespace() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    namespace(&client, "stash-system", &[]).await;
    for ns in ["team", "stash-system"] {
        repository(&client, ns, "main", None).await;
        create::<Deployment>(&client, ns, deployment("web")).await;
    }

    // Without --rollout-restores: refused, with what the admin must do.
    let (shutdown, handle, _m) = start_controller(&client, settings());
    let (reason, message) = refusal(&client, "team", "r-off", "web").await;
    assert_eq!(reason, "RolloutRefused");
    assert!(
        message.contains("not enabled") && message.contains("--rollout-restores"),
        "{message}"
    );
    assert!(
        !marked(&client, "team", "web").await,
        "a refused rollout restarted the workload"
    );
    stop_controller(shutdown, handle).await;

    // With it: a tenant's workload is restarted, the controller's own
    // namespace is still refused.
    let on = stash_controller::Settings {
        rollout_restores: true,
        ..settings()
    };
    let (shutdown, handle, _m) = start_controller(&client, on);
    let (reason, message) = refusal(&client, "stash-system", "r-own", "web").await;
    assert_eq!(reason, "RolloutRefused");
    assert!(message.contains("own namespace stash-system"), "{message}");
    assert!(!marked(&client, "stash-system", "web").await);
    create::<RestoreSession>(
        &client,
        "team",
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession", "metadata": {"name": "r-on"},
               "spec": {"repository": {"name": "main"}, "rollout": true,
                        "target": {"workload": {"kind": "Deployment", "name": "web"}}}}),
    )
    .await;
    eventually(Duration::from_secs(30), "the rollout", || async {
        marked(&client, "team", "web").await.then_some(())
    })
    .await;
    stop_controller(shutdown, handle).await;
}
