//! Helpers shared by the controller's tests against a real apiserver.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, Volume};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::Client;
use serde_json::json;
use stash_api::{BackupConfiguration, BackupSession, Repository};
use stash_envtest::Envtest;

/// A control plane with our CRDs installed, and an admin client.
pub async fn control_plane() -> (Envtest, Client) {
    let env = Envtest::start().await;
    env.install_crds(stash_api::crds()).await;
    let client = env.client().await;
    (env, client)
}

pub async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// A pod on `node` with emptyDir `volumes`, labels and annotations; there
/// is no kubelet, so it stays as written.
pub async fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    volumes: &[&str],
) {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                image: Some("busybox".into()),
                ..Container::default()
            }],
            volumes: Some(
                volumes
                    .iter()
                    .map(|v| Volume {
                        name: (*v).into(),
                        empty_dir: Some(Default::default()),
                        ..Volume::default()
                    })
                    .collect(),
            ),
            ..PodSpec::default()
        }),
        status: None,
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
}

pub async fn repository(
    client: &Client,
    ns: &str,
    name: &str,
    usage_policy: Option<serde_json::Value>,
) {
    let mut spec =
        json!({"url": "s3:minio:9000/backups", "passwordSecret": {"name": "repo-password"}});
    if let Some(p) = usage_policy {
        spec["usagePolicy"] = p;
    }
    let repo: Repository = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .expect("a Repository");
    Api::<Repository>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &repo)
        .await
        .unwrap_or_else(|e| panic!("create Repository {ns}/{name}: {e}"));
}

pub async fn configuration(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let cfg: BackupConfiguration = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("BackupConfiguration spec: {e}"));
    Api::<BackupConfiguration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cfg)
        .await
        .unwrap_or_else(|e| panic!("create BackupConfiguration {ns}/{name}: {e}"));
}

pub async fn sessions(client: &Client, ns: &str) -> Vec<BackupSession> {
    let mut list = Api::<BackupSession>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list BackupSessions in {ns}: {e}"))
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

/// Polls `check` every 100 ms until it returns Some, or panics with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
