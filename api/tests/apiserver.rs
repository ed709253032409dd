//! The API against a real kube-apiserver: the checked-in CRDs install, good
//! objects are admitted with their defaults, and bad ones are refused by the
//! apiserver itself with a message a user can act on (issue 6, "What must
//! hold" 2).

use std::path::Path;
use std::process::Command;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::{Client, Resource};
use serde_json::{json, Value};
use stash_api::{BackupConfiguration, BackupSession, Repository, RestoreSession};
use stash_envtest::Envtest;

fn kubectl(env: &Envtest, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn api_of<K: Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<K>(&()))
}

/// Creates `kind` named `name` with `spec` and returns the apiserver's
/// answer: the object as stored, or the refusal's message.
async fn create<K: Resource<DynamicType = ()>>(
    client: &Client,
    name: &str,
    spec: Value,
) -> Result<Value, String> {
    let ar = ApiResource::erase::<K>(&());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid DynamicObject");
    api_of::<K>(client)
        .create(&PostParams::default(), &obj)
        .await
        .map(|o| serde_json::to_value(o).expect("serialize"))
        .map_err(|e| e.to_string())
}

fn good_configuration() -> Value {
    json!({
        "schedule": "*/10 * * * * *",
        "target": {"selector": {"matchLabels": {"app": "db"}}},
        "repository": {"name": "main"},
        "retention": {"keepLast": 5, "keepDaily": 7},
    })
}

/// `base` with the field at `pointer` (whose parent exists) set to `value`.
fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    base.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("the parent is an object")
        .insert(key.to_owned(), value);
    base
}

#[tokio::test]
async fn apiserver_admits_good_objects_and_refuses_bad_ones() {
    let env = Envtest::start().await;

    // The checked-in YAML is what the apiserver validates, not only the
    // types it was generated from.
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let (ok, out) = kubectl(
        &env,
        &["apply", "--dry-run=server", "-f", crds.to_str().unwrap()],
    );
    assert!(
        ok,
        "kubectl apply --dry-run=server of deploy/crds failed:\n{out}"
    );
    env.install_crds(stash_api::crds()).await;
    let client = env.client().await;

    // A good BackupConfiguration gets its defaults from the schema.
    let stored = create::<BackupConfiguration>(&client, "good", good_configuration())
        .await
        .expect("a good BackupConfiguration is admitted");
    assert_eq!(stored["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(stored["spec"]["mode"], "node-agent");
    assert_eq!(stored["spec"]["successfulHistoryLimit"], 3);
    assert_eq!(stored["spec"]["failedHistoryLimit"], 1);
    assert_eq!(stored["spec"]["paused"], false);
    for schedule in [
        "0 2 * * *",
        "@daily",
        "0,30 8-18 * JAN-JUN MON-FRI",
        "0 0 ? * 5#2",
    ] {
        create::<BackupConfiguration>(
            &client,
            &format!("schedule-{}", schedule.len()),
            with(good_configuration(), "/schedule", json!(schedule)),
        )
        .await
        .unwrap_or_else(|e| panic!("schedule {schedule:?} refused: {e}"));
    }

    let refused: Vec<(&str, Value, &[&str])> = vec![
        (
            "bad-cron",
            with(
                good_configuration(),
                "/schedule",
                json!("every day at noon"),
            ),
            &["spec.schedule", "schedule must be a cron expression"],
        ),
        (
            "bad-cron-range",
            with(good_configuration(), "/schedule", json!("61 * * * *")),
            &["spec.schedule", "schedule must be a cron expression"],
        ),
        (
            "negative-keep-last",
            with(good_configuration(), "/retention/keepLast", json!(-1)),
            &["spec.retention.keepLast", "greater than or equal to 0"],
        ),
        (
            "unknown-mode",
            with(good_configuration(), "/mode", json!("daemon")),
            &[
                "spec.mode",
                "Unsupported value: \"daemon\"",
                "\"node-agent\"",
                "\"sidecar\"",
            ],
        ),
        (
            // Nothing runs sidecars yet: refused rather than silently run
            // on the privileged node agent.
            "sidecar-mode",
            with(good_configuration(), "/mode", json!("sidecar")),
            &["spec.mode", "mode \"sidecar\" is not implemented yet"],
        ),
        (
            "two-targets",
            with(
                good_configuration(),
                "/target/persistentVolumeClaim",
                json!("data"),
            ),
            &[
                "spec.target",
                "exactly one of selector, workload, persistentVolumeClaim",
            ],
        ),
        (
            "bad-timeout",
            with(good_configuration(), "/timeout", json!("ten minutes")),
            &["spec.timeout", "timeout must be a duration"],
        ),
        (
            "bad-policy",
            with(
                good_configuration(),
                "/concurrencyPolicy",
                json!("Sometimes"),
            ),
            &["spec.concurrencyPolicy", "Unsupported value: \"Sometimes\""],
        ),
    ];
    for (name, spec, expected) in refused {
        let message = create::<BackupConfiguration>(&client, name, spec)
            .await
            .map(|o| format!("admitted: {o}"))
            .expect_err(name);
        for part in expected {
            assert!(
                message.contains(part),
                "{name}: the refusal should say {part:?}; it says: {message}"
            );
        }
    }

    // Repository: a backend URL, a password Secret, a coherent usage policy.
    create::<Repository>(
        &client,
        "main",
        json!({"url": "s3:minio:9000/backups", "passwordSecret": {"name": "repo-pw"}}),
    )
    .await
    .expect("a good Repository");
    let message = create::<Repository>(
        &client,
        "bad-url",
        json!({"url": "ftp://x", "passwordSecret": {"name": "pw"}}),
    )
    .await
    .expect_err("bad url");
    assert!(
        message.contains("url must be a restic backend URL"),
        "{message}"
    );
    let message = create::<Repository>(
        &client,
        "bad-policy",
        json!({"url": "/srv", "passwordSecret": {"name": "pw"},
               "usagePolicy": {"allowedNamespaces": {"from": "Selector"}}}),
    )
    .await
    .expect_err("selector missing");
    assert!(
        message.contains("selector is required when from is Selector"),
        "{message}"
    );

    // RestoreSession: snapshot is `latest` or an id.
    let restore = json!({"repository": {"name": "main"}, "target": {"pod": "db-0"}});
    let stored = create::<RestoreSession>(&client, "restore", restore.clone())
        .await
        .expect("a good RestoreSession");
    assert_eq!(stored["spec"]["snapshot"], "latest");
    assert_eq!(stored["spec"]["overwrite"], "IfChanged");
    let message = create::<RestoreSession>(
        &client,
        "bad-snapshot",
        with(restore.clone(), "/snapshot", json!("yesterday")),
    )
    .await
    .expect_err("bad snapshot");
    assert!(
        message.contains("snapshot must be \"latest\" or a snapshot id"),
        "{message}"
    );
    // Issue 7: a rollout restarts a workload; a pod or claim has none.
    let message = create::<RestoreSession>(
        &client,
        "bad-rollout",
        with(restore.clone(), "/rollout", json!(true)),
    )
    .await
    .expect_err("rollout of a pod");
    assert!(
        message.contains("rollout applies only to a workload target"),
        "{message}"
    );
    let workload = json!({"repository": {"name": "main"}, "rollout": true,
        "target": {"workload": {"kind": "StatefulSet", "name": "db"}}});
    let stored = create::<RestoreSession>(&client, "rollout", workload)
        .await
        .expect("a rollout of a workload");
    assert_eq!(stored["spec"]["rollout"], true);

    // BackupSession: the spec cannot change after creation.
    create::<BackupSession>(&client, "run-1", json!({"backupConfiguration": "good"}))
        .await
        .expect("a manual BackupSession");
    let sessions = api_of::<BackupSession>(&client);
    let mut session = sessions.get("run-1").await.expect("get run-1");
    session.data["spec"]["backupConfiguration"] = json!("other");
    let message = sessions
        .replace("run-1", &PostParams::default(), &session)
        .await
        .map(|_| "admitted".to_owned())
        .expect_err("spec change")
        .to_string();
    assert!(message.contains("spec cannot change"), "{message}");

    // kubectl shows the printer columns, and the short names work.
    let (ok, out) = kubectl(&env, &["get", "bs", "-n", "default"]);
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default();
    for column in ["NAME", "CONFIGURATION", "PHASE", "PROGRESS", "AGE"] {
        assert!(header.contains(column), "no {column} column in: {header}");
    }
    for short in ["repo", "bc", "rs"] {
        let (ok, out) = kubectl(&env, &["get", short, "-n", "default", "-o", "name"]);
        assert!(ok && !out.trim().is_empty(), "kubectl get {short}: {out}");
    }
}
