//! Issue 7, restore into a workload before its containers start: the real
//! apiserver calls the controller's webhook (HTTPS on 127.0.0.1, trusted
//! through the caBundle the controller sets), which gives the new pods of a
//! workload restored with `rollout: true` the restore-wait init container;
//! other pods are untouched; with the webhook down pods are still created
//! (failurePolicy Ignore) and the restore says which pods lack it; an
//! OrderedReady StatefulSet is restored pod by pod.
//!
//! There is no kube-controller-manager: the test creates the pods a
//! ReplicaSet or StatefulSet controller would, from the workload's current
//! pod template, with their ownerReferences.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use stash_api::{
    ItemPhase, RestoreSession, RestoreSessionStatus, SessionPhase, LABEL_RESTORE_SESSION,
    RESTORE_WAIT_CONTAINER,
};
use stash_controller::certs::CertSettings;
use stash_controller::webhook::{self, WebhookSettings, MUTATE_PODS_PATH};
use stash_controller::{HostPathAllowList, Metrics};
use tokio_util::sync::CancellationToken;

use crate::common::*;

const IMAGE: &str = "registry.example.com/stash-agent:9.9";

/// The webhook configuration of deploy/, pointed at `url` instead of the
/// Service (there is no Service routing without kube-proxy).
async fn webhook_configuration(client: &Client, url: &str) {
    let cfg: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "stash-controller"},
        "webhooks": [{
            "name": "restore-wait.stash.rs",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": url},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "objectSelector": {"matchExpressions": [{"key": LABEL_RESTORE_SESSION, "operator": "Exists"}]},
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                "operator": "NotIn", "values": ["kube-system", "stash-system"]}]},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
        }],
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &cfg)
        .await
        .unwrap();
}

/// The webhook's certificate settings in these tests: a generated
/// certificate for 127.0.0.1 in Secret `stash-system/stash-webhook-tls`,
/// its CA in the `stash-controller` webhook configurations.
fn test_certs() -> CertSettings {
    CertSettings {
        dns_names: vec!["127.0.0.1".into()],
        ..CertSettings::new(
            "stash-system",
            "stash-webhook-tls",
            "unused",
            Some("stash-controller".into()),
        )
    }
}

/// Runs the webhook on `listener` with `certs`, as the controller's main
/// does, until the token is cancelled.
fn run_webhook(
    client: &Client,
    listener: tokio::net::TcpListener,
    certs: CertSettings,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<stash_controller::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let settings = WebhookSettings {
        restore_wait_image: webhook::RestoreWaitImage::Fixed(IMAGE.into()),
        host_paths: HostPathAllowList::default(),
    };
    let handle = tokio::spawn(webhook::run(
        client.clone(),
        certs,
        settings,
        Metrics::default(),
        listener,
        shutdown.clone(),
    ));
    (shutdown, handle)
}

/// Starts the webhook on `listener` as the controller's main does.
fn start_webhook(
    client: &Client,
    listener: tokio::net::TcpListener,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let (shutdown, server) = run_webhook(client, listener, test_certs());
    let handle = tokio::spawn(async move {
        server
            .await
            .expect("webhook task")
            .expect("the webhook serves");
    });
    (shutdown, handle)
}

async fn restore(client: &Client, name: &str, kind: &str, workload: &str) {
    create::<RestoreSession>(
        client,
        "team",
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession", "metadata": {"name": name},
               "spec": {"repository": {"name": "main"}, "rollout": true,
                        "target": {"workload": {"kind": kind, "name": workload}}}}),
    )
    .await;
}

async fn restore_where(
    client: &Client,
    name: &str,
    what: &str,
    pred: impl Fn(&RestoreSessionStatus) -> bool,
) -> RestoreSessionStatus {
    let timeout = Duration::from_secs(30);
    status_where::<RestoreSession>(client, ("team", name), timeout, what, pred).await
}

/// Waits until the controller has marked the pod template; returns it.
async fn marked_template(client: &Client, kind: &str, name: &str, session: &str) -> Value {
    eventually(
        Duration::from_secs(30),
        "the pod template marked for the rollout",
        || async {
            let t = match kind {
                "Deployment" => serde_json::to_value(
                    Api::<Deployment>::namespaced(client.clone(), "team")
                        .get(name)
                        .await
                        .ok()?
                        .spec?
                        .template,
                ),
                _ => serde_json::to_value(
                    Api::<StatefulSet>::namespaced(client.clone(), "team")
                        .get(name)
                        .await
                        .ok()?
                        .spec?
                        .template,
                ),
            }
            .unwrap();
            (t["metadata"]["labels"][LABEL_RESTORE_SESSION] == session
                && t["metadata"]["annotations"][LABEL_RESTORE_SESSION]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("{session}/"))))
            .then_some(t)
        },
    )
    .await
}

/// A pod from `template`, as the workload's controller would create it.
async fn pod_from(
    client: &Client,
    template: &Value,
    name: &str,
    node: Option<&str>,
    owner: (&str, &str, &str),
    extra_labels: Value,
) -> Pod {
    let mut meta = template["metadata"].clone();
    meta["name"] = json!(name);
    for (k, v) in extra_labels.as_object().unwrap() {
        meta["labels"][k] = v.clone();
    }
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
        "uid": owner.2, "controller": true}]);
    let mut spec = template["spec"].clone();
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    create::<Pod>(
        client,
        "team",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}),
    )
    .await
}

fn init_containers(p: &Pod) -> Vec<Value> {
    p.spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
}

/// Plays the agent: claims and finishes item `i` as Succeeded.
async fn restored(client: &Client, session: &str, i: usize, st: &RestoreSessionStatus) {
    let item = &st.items[i];
    let mut ops = item_identity(i, "team", &item.common.pod, &item.common.volume);
    ops.extend([
        json!({"op": "test", "path": format!("/status/items/{i}/phase"), "value": "Pending"}),
        json!({"op": "replace", "path": format!("/status/items/{i}/phase"), "value": "Succeeded"}),
        json!({"op": "add", "path": format!("/status/items/{i}/claimedBy"), "value": "n/a/1"}),
    ]);
    agent_patch(client, "restoresessions", "team", session, json!(ops))
        .await
        .unwrap();
}

#[tokio::test]
async fn rollout_restores_get_restore_wait_from_the_webhook() {
    let (_env, client) = control_plane().await;
    namespace(&client, "team", &[]).await;
    namespace(&client, "stash-system", &[]).await;
    repository(&client, "team", "main", None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    webhook_configuration(
        &client,
        &format!("https://127.0.0.1:{port}{MUTATE_PODS_PATH}"),
    )
    .await;
    let (webhook_stop, webhook) = start_webhook(&client, listener);
    let rollouts = stash_controller::Settings {
        rollout_restores: true,
        ..settings()
    };
    let (shutdown, handle, _m) = start_controller(&client, rollouts);

    // The controller generated the CA into its Secret and made the
    // apiserver trust it.
    let ca = eventually(Duration::from_secs(20), "the caBundle", || async {
        let cfg = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get("stash-controller")
            .await
            .ok()?;
        cfg.webhooks?[0].client_config.ca_bundle.clone()
    })
    .await;
    let secret = Api::<Secret>::namespaced(client.clone(), "stash-system")
        .get("stash-webhook-tls")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["ca.crt"], ca);

    // A Deployment with an opted-in emptyDir, mounted by its app at /cache.
    let template = json!({
        "metadata": {"labels": {"app": "web"}, "annotations": {"stash.rs/backup-volumes": "cache"}},
        "spec": {"containers": [{"name": "app", "image": "busybox",
                                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
                 "volumes": [{"name": "cache", "emptyDir": {}}]}});
    let web: Deployment = create(
        &client,
        "team",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}}),
    )
    .await;
    let web_uid = web.uid().unwrap();
    // Its pod from before the restore: not the webhook's business.
    let old = pod_from(
        &client,
        &template,
        "web-aaaaa-1",
        Some("node-a"),
        ("ReplicaSet", "web-aaaaa", &web_uid),
        json!({"pod-template-hash": "aaaaa"}),
    )
    .await;
    assert!(init_containers(&old).is_empty());

    restore(&client, "r-web", "Deployment", "web").await;
    let marked = marked_template(&client, "Deployment", "web", "r-web").await;
    let st = restore_where(&client, "r-web", "the rollout condition", |st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "RolloutStarted" && c.status == "True")
    })
    .await;
    assert_eq!(st.phase, SessionPhase::Pending);
    assert!(st.items.is_empty(), "the old pod is not restored into");

    // The new ReplicaSet's pod gets restore-wait, first, at the app's path.
    let new = pod_from(
        &client,
        &marked,
        "web-bbbbb-1",
        None,
        ("ReplicaSet", "web-bbbbb", &web_uid),
        json!({"pod-template-hash": "bbbbb"}),
    )
    .await;
    let init = init_containers(&new);
    assert_eq!(init.len(), 1, "{init:?}");
    assert_eq!(init[0]["name"], RESTORE_WAIT_CONTAINER);
    assert_eq!(init[0]["image"], IMAGE);
    assert_eq!(
        init[0]["args"],
        json!(["restore-wait", "--session", "r-web", "--dir", "/cache"])
    );
    assert_eq!(
        init[0]["volumeMounts"],
        json!([{"name": "cache", "mountPath": "/cache"}])
    );
    // A pod carrying the label that is not the target's: untouched.
    let stray = pod_from(
        &client,
        &marked,
        "api-ccccc-1",
        Some("node-a"),
        ("ReplicaSet", "api-ccccc", &web_uid),
        json!({"pod-template-hash": "ccccc"}),
    )
    .await;
    assert!(init_containers(&stray).is_empty());

    // Unscheduled: no item yet. Once bound, one; restored, the session is
    // over (one replica wanted).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api: Api<RestoreSession> = Api::namespaced(client.clone(), "team");
    let st = api.get("r-web").await.unwrap().status.unwrap();
    assert!(st.items.is_empty(), "{st:?}");
    assert!(
        st.conditions
            .iter()
            .any(|c| c.message.contains("web-bbbbb-1 not scheduled")),
        "{:?}",
        st.conditions
    );
    bind(&client, "team", "web-bbbbb-1", "node-b").await;
    let st = restore_where(&client, "r-web", "an item", |st| !st.items.is_empty()).await;
    assert_eq!(
        (
            st.items[0].common.pod.as_str(),
            st.items[0].common.volume.as_str(),
            st.items[0].common.node.as_deref()
        ),
        ("web-bbbbb-1", "cache", Some("node-b"))
    );
    assert_eq!(st.items[0].source_hosts, ["team/web/cache"]);
    restored(&client, "r-web", 0, &st).await;
    let st = restore_where(&client, "r-web", "the end", |st| st.phase.is_finished()).await;
    assert_eq!(st.phase, SessionPhase::Succeeded);
    // Later pods of the workload (a finished restore) get nothing.
    let later = pod_from(
        &client,
        &marked,
        "web-bbbbb-2",
        Some("node-a"),
        ("ReplicaSet", "web-bbbbb", &web_uid),
        json!({"pod-template-hash": "bbbbb"}),
    )
    .await;
    assert!(init_containers(&later).is_empty());

    // An OrderedReady StatefulSet: pod 1 appears only after pod 0 is
    // restored; the restore waits for it instead of deadlocking.
    let template = json!({
        "metadata": {"labels": {"app": "db"}, "annotations": {"stash.rs/backup-volumes": "data"}},
        "spec": {"containers": [{"name": "db", "image": "busybox",
                                 "securityContext": {"runAsUser": 999},
                                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/db"}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}]}});
    let db: StatefulSet = create(
        &client,
        "team",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
               "spec": {"replicas": 2, "serviceName": "db", "podManagementPolicy": "OrderedReady",
                        "selector": {"matchLabels": {"app": "db"}}, "template": template}}),
    )
    .await;
    let db_uid = db.uid().unwrap();
    restore(&client, "r-db", "StatefulSet", "db").await;
    let marked = marked_template(&client, "StatefulSet", "db", "r-db").await;
    let db0 = pod_from(
        &client,
        &marked,
        "db-0",
        Some("node-a"),
        ("StatefulSet", "db", &db_uid),
        json!({}),
    )
    .await;
    let init = init_containers(&db0);
    assert_eq!(
        init[0]["args"],
        json!(["restore-wait", "--session", "r-db", "--dir", "/var/lib/db"])
    );
    assert_eq!(init[0]["securityContext"]["runAsUser"], 999);
    let st = restore_where(&client, "r-db", "db-0's item", |st| st.items.len() == 1).await;
    assert_eq!(st.phase, SessionPhase::Running);
    assert!(
        st.conditions.iter().any(|c| c
            .message
            .contains("StatefulSet team/db has 1 of its 2 pod(s)")),
        "{:?}",
        st.conditions
    );
    restored(&client, "r-db", 0, &st).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = api.get("r-db").await.unwrap().status.unwrap();
    assert_eq!(
        (st.phase, st.progress.as_deref()),
        (SessionPhase::Running, Some("1/1")),
        "one replica is still to come: {st:?}"
    );

    // The webhook is down when db-1 is created: the pod is created all
    // the same (failurePolicy Ignore), without restore-wait, and the
    // restore says so instead of writing under its running containers.
    webhook_stop.cancel();
    webhook.await.unwrap();
    let bare = pod_from(
        &client,
        &marked,
        "db-1",
        Some("node-b"),
        ("StatefulSet", "db", &db_uid),
        json!({}),
    )
    .await;
    assert!(init_containers(&bare).is_empty());
    let st = restore_where(&client, "r-db", "the missing restore-wait", |st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "RestoreWaitMissing" && c.status == "True")
    })
    .await;
    assert_eq!(st.items.len(), 1, "nothing restored into db-1: {st:?}");
    eventually(
        Duration::from_secs(10),
        "a RestoreWaitMissing event",
        || {
            let client = client.clone();
            async move {
                events_of(&client, "team", "r-db")
                    .await
                    .into_iter()
                    .find(|e| {
                        e.0 == "Warning" && e.1 == "RestoreWaitMissing" && e.2.contains("db-1")
                    })
            }
        },
    )
    .await;

    // The webhook back, db-1 deleted and created again: restored.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (webhook_stop, webhook) = start_webhook(&client, listener);
    Api::<Pod>::namespaced(client.clone(), "team")
        .delete("db-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "db-1 gone", || async {
        Api::<Pod>::namespaced(client.clone(), "team")
            .get_opt("db-1")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let db1 = pod_from(
        &client,
        &marked,
        "db-1",
        Some("node-b"),
        ("StatefulSet", "db", &db_uid),
        json!({}),
    )
    .await;
    assert_eq!(init_containers(&db1)[0]["name"], RESTORE_WAIT_CONTAINER);
    let st = restore_where(&client, "r-db", "db-1's item", |st| st.items.len() == 2).await;
    assert_eq!(
        (st.items[1].common.pod.as_str(), st.items[1].common.phase),
        ("db-1", ItemPhase::Pending)
    );
    restored(&client, "r-db", 1, &st).await;
    let st = restore_where(&client, "r-db", "the end", |st| st.phase.is_finished()).await;
    assert_eq!(st.phase, SessionPhase::Succeeded);
    assert!(st
        .conditions
        .iter()
        .any(|c| c.type_ == "RestoreWaitMissing" && c.status == "False"));

    // A rollout that would restore into a claim still in use is refused.
    create::<Deployment>(
        &client,
        "team",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pg"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "pg"}},
                        "template": {"metadata": {"labels": {"app": "pg"},
                                                  "annotations": {"stash.rs/backup-volumes": "data"}},
                                     "spec": {"containers": [{"name": "pg", "image": "postgres"}],
                                              "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pg"}}]}}}}),
    )
    .await;
    restore(&client, "r-pg", "Deployment", "pg").await;
    let st = restore_where(&client, "r-pg", "the refusal", |st| st.phase.is_finished()).await;
    assert_eq!(st.phase, SessionPhase::Failed);
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "RolloutRefused");
    assert!(ready.message.contains("Recreate"), "{}", ready.message);
    let pg: Deployment = Api::namespaced(client.clone(), "team")
        .get("pg")
        .await
        .unwrap();
    assert!(
        !pg.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap()
            .contains_key(LABEL_RESTORE_SESSION),
        "a refused rollout leaves the workload alone"
    );

    webhook_stop.cancel();
    webhook.await.unwrap();
    stop_controller(shutdown, handle).await;
}

/// The certificate the webhook at `port` presents to a client that trusts
/// exactly `ca_bundle` (PEM, as the apiserver does), as PEM; Err when the
/// handshake fails.
async fn served_certificate(port: u16, ca_bundle: &[u8]) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_bundle) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok(pem_of(&der))
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
        lines.join("\n")
    )
}

/// The certificates of a PEM bundle, normalised by [`pem_of`].
fn pems(bundle: &[u8]) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(bundle)
        .map(|c| pem_of(&c.unwrap()))
        .collect()
}

/// Issue 12, hole 9: a generated webhook certificate is renewed two thirds
/// into its validity (not before), the caBundle then trusts the new CA (and
/// the old, for replicas not yet switched), and the webhook serves the new
/// certificate: checked with a real TLS handshake trusting only the
/// caBundle the apiserver would use.
#[tokio::test]
async fn the_webhook_certificate_is_renewed_before_it_expires() {
    let (_env, client) = control_plane().await;
    namespace(&client, "stash-system", &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    webhook_configuration(
        &client,
        &format!("https://127.0.0.1:{port}{MUTATE_PODS_PATH}"),
    )
    .await;
    let certs = CertSettings {
        validity: Duration::from_secs(9),
        recheck: Duration::from_millis(300),
        ..test_certs()
    };
    let (shutdown, server) = run_webhook(&client, listener, certs);
    let secrets = Api::<Secret>::namespaced(client.clone(), "stash-system");
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let ca_bundle = || async {
        configs.get("stash-controller").await.ok()?.webhooks?[0]
            .client_config
            .ca_bundle
            .clone()
            .map(|b| b.0)
    };
    let first_bundle = eventually(Duration::from_secs(20), "the first caBundle", ca_bundle).await;
    let first = secrets.get("stash-webhook-tls").await.unwrap();
    let first_leaf = pems(&first.data.as_ref().unwrap()["tls.crt"].0);
    let first_ca = pems(&first_bundle);
    assert_eq!(first_ca.len(), 1);
    let served = eventually(Duration::from_secs(10), "the webhook serving", || async {
        served_certificate(port, &first_bundle).await.ok()
    })
    .await;
    assert_eq!(vec![served], first_leaf);

    // Not renewed early: a third into its life it is still the first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = secrets.get("stash-webhook-tls").await.unwrap();
    assert_eq!(pems(&now.data.as_ref().unwrap()["tls.crt"].0), first_leaf);

    // Renewed at two thirds (6 s), well before it expires (9 s).
    let renewed = eventually(Duration::from_secs(6), "the renewed Secret", || async {
        let s = secrets.get("stash-webhook-tls").await.ok()?;
        let leaf = pems(&s.data.as_ref()?["tls.crt"].0);
        (leaf != first_leaf).then_some(s)
    })
    .await;
    let data = renewed.data.as_ref().unwrap();
    let new_ca = pems(&data["ca.crt"].0);
    assert_eq!(new_ca.len(), 2, "the new CA and the previous one");
    assert_ne!(new_ca[0], first_ca[0]);
    assert_eq!(new_ca[1], first_ca[0]);
    let new_leaf = pems(&data["tls.crt"].0);
    let bundle = eventually(Duration::from_secs(5), "the new caBundle", || async {
        let b = ca_bundle().await?;
        (pems(&b) == new_ca).then_some(b)
    })
    .await;
    // The apiserver's view: only the new caBundle, and the webhook serves
    // the new certificate under it. Without the old CA it would not trust
    // the first certificate any more.
    let served = eventually(
        Duration::from_secs(5),
        "the new certificate served",
        || async {
            let s = served_certificate(port, &bundle).await.ok()?;
            (vec![s.clone()] == new_leaf).then_some(s)
        },
    )
    .await;
    assert_ne!(vec![served], first_leaf);
    let only_new_ca = new_ca[0].clone().into_bytes();
    assert!(
        served_certificate(port, &only_new_ca).await.is_ok(),
        "the new certificate is signed by the new CA"
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
