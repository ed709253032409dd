//! Issue 6, "What must hold" 4: two controller processes; only the leader
//! schedules; kill it and the other takes over within the lease time.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use stash_controller::ANNOTATION_SCHEDULED_BY;

use crate::common::*;

const LEASE_SECONDS: u64 = 4;
const RENEW_SECONDS: u64 = 1;

/// A controller process, killed when dropped.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn replica(kubeconfig: &std::path::Path, identity: &str, log: &std::path::Path) -> Replica {
    let log = std::fs::File::create(log).unwrap();
    Replica(
        Command::new(env!("CARGO_BIN_EXE_stash-controller"))
            .env("KUBECONFIG", kubeconfig)
            .env("STASH_LOG", "info")
            .args([
                "--identity",
                identity,
                "--lease-namespace",
                "stash-system",
                "--lease-duration",
                &LEASE_SECONDS.to_string(),
                "--renew-period",
                &RENEW_SECONDS.to_string(),
                "--metrics-addr",
                "127.0.0.1:0",
                // Two replicas on one host: the webhook's fixed port would
                // clash, and leadership does not concern it.
                "--no-webhook",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start stash-controller"),
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("stash-controller")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

async fn schedulers(client: &kube::Client) -> Vec<(String, String)> {
    sessions(client, "ha")
        .await
        .into_iter()
        .map(|s| {
            let by = s
                .metadata
                .annotations
                .unwrap_or_default()
                .get(ANNOTATION_SCHEDULED_BY)
                .cloned()
                .unwrap_or_default();
            (s.metadata.name.unwrap_or_default(), by)
        })
        .collect()
}

#[tokio::test]
async fn only_the_leader_schedules_and_a_successor_takes_over() {
    let (env, client) = control_plane().await;
    let logs = tempfile::tempdir().unwrap();
    namespace(&client, "stash-system", &[]).await;
    namespace(&client, "ha", &[]).await;
    repository(&client, "ha", "main", None).await;
    db_pod(&client, "ha", "db-0", "node-a").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "stash-system");

    let mut a = Some(replica(
        &env.kubeconfig(),
        "replica-a",
        &logs.path().join("a.log"),
    ));
    eventually(Duration::from_secs(20), "replica-a to lead", || {
        let leases = leases.clone();
        async move { (holder(&leases).await.as_deref() == Some("replica-a")).then_some(()) }
    })
    .await;
    let _b = replica(&env.kubeconfig(), "replica-b", &logs.path().join("b.log"));

    configuration(
        &client,
        "ha",
        "db",
        json!({
            "schedule": "*/2 * * * * *",
            "target": {"selector": {"matchLabels": {"app": "db"}}},
            "repository": {"name": "main"},
            "concurrencyPolicy": "Allow",
        }),
    )
    .await;
    eventually(Duration::from_secs(20), "3 sessions", || {
        let client = client.clone();
        async move { (schedulers(&client).await.len() >= 3).then_some(()) }
    })
    .await;
    let by_a = schedulers(&client).await;
    assert!(
        by_a.iter().all(|(_, by)| by == "replica-a"),
        "a follower scheduled: {by_a:?}\n--- b.log ---\n{}",
        std::fs::read_to_string(logs.path().join("b.log")).unwrap_or_default()
    );

    // Kill the leader without letting it release the Lease.
    drop(a.take());
    let killed = Instant::now();
    eventually(
        Duration::from_secs(LEASE_SECONDS + 10),
        "replica-b to lead",
        || {
            let leases = leases.clone();
            async move { (holder(&leases).await.as_deref() == Some("replica-b")).then_some(()) }
        },
    )
    .await;
    let takeover = killed.elapsed();
    eprintln!("replica-b took over {takeover:?} after replica-a was killed");
    assert!(
        takeover <= Duration::from_secs(LEASE_SECONDS + 2 * RENEW_SECONDS),
        "takeover took {takeover:?}, more than the lease time ({LEASE_SECONDS} s) plus two renew periods"
    );
    eventually(
        Duration::from_secs(10),
        "a session scheduled by replica-b",
        || {
            let client = client.clone();
            async move {
                schedulers(&client)
                    .await
                    .iter()
                    .any(|(_, by)| by == "replica-b")
                    .then_some(())
            }
        },
    )
    .await;
    let all = schedulers(&client).await;
    for (name, by) in &all {
        assert!(
            by == "replica-a" || by == "replica-b",
            "{name} scheduled by {by:?}"
        );
        if by_a.iter().any(|(n, _)| n == name) {
            assert_eq!(by, "replica-a");
        }
    }
}
