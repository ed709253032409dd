//! The envtest control plane comes up, serves a client and kubectl, and
//! goes away when dropped.

use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use stash_envtest::Envtest;

#[tokio::test]
async fn starts_serves_and_stops() {
    let started = std::time::Instant::now();
    let env = Envtest::start().await;
    eprintln!("control plane ready in {:?}", started.elapsed());

    // The apiserver bootstraps the system namespaces itself.
    let namespaces: Api<Namespace> = Api::all(env.client().await);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.iter().any(|n| n == "kube-system"), "{names:?}");

    // kubectl works with the written kubeconfig.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/default"
    );

    let server = env.server().to_owned();
    drop(env);
    let client = port_open(&server);
    assert!(
        !client,
        "the apiserver at {server} still answers after drop"
    );
}

/// Whether anything still accepts TCP connections at the server's port.
fn port_open(server: &str) -> bool {
    let addr = server.trim_start_matches("https://");
    std::net::TcpStream::connect(addr).is_ok()
}
