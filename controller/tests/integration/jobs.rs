//! Issue 15, Jobs: a PersistentVolumeClaim target that no pod mounts gets a
//! Job item, and the controller makes the Job and a grant that covers that
//! one session only, on a real apiserver; the Job's pod failing fails the
//! item with the pod's reason; a RestoreSession's `executor: job` needs a
//! claim target.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use stash_api::{BackupSession, Executor, ItemPhase, RestoreSession, SessionPhase};

use crate::common::*;

/// Whether ServiceAccount `ns/sa` may `verb` `resource` named `name` in `ns`.
async fn may(client: &Client, ns: &str, sa: &str, verb: &str, resource: &str, name: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let group = if resource == "secrets" {
        ""
    } else {
        "stash.rs"
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{ns}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("create a SubjectAccessReview")
        .status
        .expect("a review has a status")
        .allowed
}

#[tokio::test]
async fn a_claim_no_pod_mounts_gets_a_job_whose_pod_failure_fails_the_item() {
    let (_env, client) = control_plane().await;
    let ns = "team";
    namespace(&client, ns, &[]).await;
    repository(&client, ns, "main", None).await;
    let _: PersistentVolumeClaim = create(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "archive"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    configuration(
        &client,
        ns,
        "archive",
        json!({"schedule": "@yearly", "paused": true, "repository": {"name": "main"},
               "target": {"persistentVolumeClaim": "archive"}}),
    )
    .await;
    let settings = stash_controller::Settings {
        job_image: Some(stash_controller::webhook::RestoreWaitImage::Fixed(
            "stash-agent:it".into(),
        )),
        ..settings()
    };
    let (shutdown, handle, _) = start_controller(&client, settings);
    backup_session(&client, ns, "a1", "archive").await;
    let sessions: Api<BackupSession> = Api::namespaced(client.clone(), ns);
    let s = eventually(
        Duration::from_secs(20),
        "the Job item names its Job",
        || {
            let sessions = sessions.clone();
            async move {
                let s = sessions.get("a1").await.ok()?;
                let i = s.status.as_ref()?.items.first()?;
                i.common.job.is_some().then_some(s)
            }
        },
    )
    .await;
    let st = s.status.clone().unwrap();
    assert_eq!(st.phase, SessionPhase::Running);
    let item = &st.items[0];
    assert_eq!(item.common.executor, Some(Executor::Job));
    assert_eq!(item.host.as_deref(), Some("team/archive"));
    let name = item.common.job.clone().unwrap();
    let job = Api::<Job>::namespaced(client.clone(), ns)
        .get(&name)
        .await
        .unwrap();
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("BackupSession", "a1")
    );
    assert_eq!(owner.uid, s.metadata.uid.clone().unwrap());
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("stash-agent:it"));
    // The grant: this session, its configuration and Repository; no more.
    for (verb, resource, object, want) in [
        ("get", "backupsessions", "a1", true),
        ("patch", "backupsessions/status", "a1", true),
        ("get", "backupconfigurations", "archive", true),
        ("get", "repositories", "main", true),
        ("patch", "backupsessions/status", "other", false),
        ("update", "backupsessions/status", "a1", false),
        ("get", "backupconfigurations", "other", false),
        ("get", "secrets", "repo-password", false),
    ] {
        assert_eq!(
            may(&client, ns, &name, verb, resource, object).await,
            want,
            "{verb} {resource} {object}"
        );
    }

    // The Job's pod (this apiserver runs no Job controller: made here as
    // it would) is OOMKilled before it writes a result.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _: Pod = create(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{name}-x1"), "labels": {"job-name": name}},
               "spec": {"containers": [{"name": "stash", "image": "stash-agent:it"}]}}),
    )
    .await;
    pods.patch_status(
        &format!("{name}-x1"),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed", "containerStatuses": [{
            "name": "stash", "image": "stash-agent:it", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}})),
    )
    .await
    .unwrap();
    let done = eventually(Duration::from_secs(20), "the session to fail", || {
        let sessions = sessions.clone();
        async move {
            let s = sessions.get("a1").await.ok()?;
            s.status.as_ref()?.phase.is_finished().then_some(s)
        }
    })
    .await;
    let st = done.status.unwrap();
    assert_eq!(st.phase, SessionPhase::Failed, "{st:?}");
    assert_eq!(st.items[0].common.phase, ItemPhase::Failed);
    assert_eq!(
        st.items[0].common.error.as_deref(),
        Some(
            format!("Job pod {name}-x1: container stash terminated: OOMKilled (exit code 137)")
                .as_str()
        )
    );
    stop_controller(shutdown, handle).await;
}

#[tokio::test]
async fn executor_job_restores_only_into_a_claim() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    let rs: RestoreSession = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
        "metadata": {"name": "r", "namespace": "team"},
        "spec": {"repository": {"name": "main"}, "executor": "job", "target": {"pod": "p"}}
    }))
    .unwrap();
    let e = Api::<RestoreSession>::namespaced(client.clone(), "team")
        .create(&PostParams::default(), &rs)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("executor job restores into a persistentVolumeClaim target only"),
        "{e}"
    );
}
