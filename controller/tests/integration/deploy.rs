//! Issue 7, deploy manifests: `kubectl apply -k deploy/` installs
//! everything, every manifest is valid for a real apiserver, the RBAC grants
//! each component what it needs and no more, the controller really runs
//! under its own ServiceAccount's permissions, and the Helm chart renders
//! the same objects as the kustomize base.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use stash_envtest::Envtest;

use crate::common::*;

/// The kubelet-root components and the path each sets; every directory
/// under deploy/kubelet-root/ must be here (and so is tested).
const KUBELET_ROOTS: &[(&str, &str)] = &[
    ("k0s", "/var/lib/k0s/kubelet"),
    ("k3s-legacy", "/var/lib/rancher/k3s/agent/kubelet"),
    ("microk8s", "/var/snap/microk8s/common/var/lib/kubelet"),
    ("rke-prefix", "/opt/rke/var/lib/kubelet"),
    ("tkgi", "/var/vcap/data/kubelet"),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/ exists")
}

/// Runs kubectl against `env` (or with no cluster when `None`).
fn kubectl(env: Option<&Envtest>, args: &[&str]) -> Output {
    let mut cmd = Command::new("kubectl");
    if let Some(env) = env {
        cmd.arg("--kubeconfig").arg(env.kubeconfig());
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (it must be on PATH): {e}"))
}

/// Runs kubectl and returns its stdout; panics with its stderr on failure.
fn kubectl_ok(env: Option<&Envtest>, args: &[&str]) -> String {
    let out = kubectl(env, args);
    assert!(
        out.status.success(),
        "kubectl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
}

/// The `resources:` of deploy/kustomization.yaml.
fn kustomization_resources() -> Vec<String> {
    let path = deploy_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    doc["resources"]
        .as_sequence()
        .expect("kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a path").to_owned())
        .collect()
}

/// Every manifest under deploy/ (relative paths): YAML files other than
/// kustomizations, outside the Helm chart (templates, not manifests).
fn manifest_files() -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                // The Helm chart, and the optional monitoring add-on
                // (Prometheus Operator CRDs; tested by the e2e binary's
                // promtool and Prometheus tests).
                if rel != "helm" && rel != "monitoring" {
                    walk(&path, root, out);
                }
            } else if (rel.ends_with(".yaml") || rel.ends_with(".yml"))
                && path.file_name().unwrap() != "kustomization.yaml"
            {
                out.insert(rel);
            }
        }
    }
    let root = deploy_dir();
    let mut out = BTreeSet::new();
    walk(&root, &root, &mut out);
    out
}

/// `to` relative to `from` (both absolute): kustomize refuses absolute
/// paths in `resources` and `components`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

/// The object of `kind` and `name` in a List (`{"items": [...]}`).
fn object<'a>(list: &'a Value, kind: &str, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .expect("a List")
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// What the DaemonSet's kubelet-root volume, mount and env say.
fn kubelet_root_of(list: &Value) -> [String; 3] {
    let ds = object(list, "DaemonSet", "stash-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kubelet-root")
        .expect("a kubelet-root volume");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "kubelet-root")
        .expect("a kubelet-root mount");
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "STASH_KUBELET_ROOT")
        .expect("STASH_KUBELET_ROOT");
    assert_eq!(mount["mountPropagation"], "HostToContainer");
    assert_ne!(
        mount["readOnly"], true,
        "restores write to the kubelet root"
    );
    [
        volume["hostPath"]["path"].as_str().unwrap().to_owned(),
        mount["mountPath"].as_str().unwrap().to_owned(),
        env["value"].as_str().unwrap().to_owned(),
    ]
}

#[test]
fn kustomization_lists_every_manifest_and_crd() {
    let listed: BTreeSet<String> = kustomization_resources().into_iter().collect();
    let files: BTreeSet<String> = manifest_files()
        .into_iter()
        .filter(|f| !is_component(f))
        .collect();
    let orphans: Vec<&String> = files.difference(&listed).collect();
    assert!(
        orphans.is_empty(),
        "manifests in deploy/ that deploy/kustomization.yaml does not list: {orphans:?}"
    );
    let missing: Vec<&String> = listed.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "deploy/kustomization.yaml lists files that do not exist: {missing:?}"
    );
    for crd in stash_api::crds() {
        let file = format!("crds/{}.yaml", crd.metadata.name.unwrap());
        assert!(listed.contains(&file), "{file} is not in the kustomization");
    }

    let dir = deploy_dir().join("kubelet-root");
    let components: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let known: BTreeSet<String> = KUBELET_ROOTS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        components, known,
        "deploy/kubelet-root/ and this test's KUBELET_ROOTS table differ"
    );
    let stray: Vec<String> = manifest_files()
        .into_iter()
        .filter(|f| f.starts_with("kubelet-root/"))
        .collect();
    assert!(
        stray.is_empty(),
        "a kubelet-root component directory holds only its kustomization.yaml: {stray:?}"
    );

    // The rollout component lists every manifest of its directory.
    let text = std::fs::read_to_string(deploy_dir().join("rollout/kustomization.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let listed: BTreeSet<String> = doc["resources"]
        .as_sequence()
        .expect("rollout/kustomization.yaml has resources")
        .iter()
        .map(|r| format!("rollout/{}", r.as_str().unwrap()))
        .collect();
    let files: BTreeSet<String> = manifest_files()
        .into_iter()
        .filter(|f| f.starts_with("rollout/"))
        .collect();
    assert_eq!(
        listed, files,
        "deploy/rollout/ and its kustomization differ"
    );
}

/// Whether `file` (relative to deploy/) belongs to an opt-in component
/// rather than the base.
fn is_component(file: &str) -> bool {
    file.starts_with("kubelet-root/") || file.starts_with("rollout/")
}

#[tokio::test]
async fn every_manifest_passes_a_server_side_dry_run() {
    let env = Envtest::start().await;
    let deploy = deploy_dir();
    let deploy_arg = deploy.to_str().unwrap();
    // A dry run of a custom resource needs its CRD, and one of a namespaced
    // object needs its namespace: those two are applied for real.
    kubectl_ok(
        Some(&env),
        &[
            "apply",
            "--server-side",
            "-f",
            &format!("{deploy_arg}/crds"),
        ],
    );
    kubectl_ok(
        Some(&env),
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
    );
    kubectl_ok(
        Some(&env),
        &["apply", "-f", &format!("{deploy_arg}/namespace.yaml")],
    );

    let rendered: Value = serde_json::from_str(&kubectl_ok(
        Some(&env),
        &["apply", "--dry-run=server", "-k", deploy_arg, "-o", "json"],
    ))
    .expect("kubectl prints JSON");
    for file in manifest_files()
        .iter()
        .filter(|f| !f.starts_with("kubelet-root/"))
    {
        let path = deploy.join(file);
        kubectl_ok(
            Some(&env),
            &["apply", "--dry-run=server", "-f", path.to_str().unwrap()],
        );
    }

    // What the server accepted is what the issue asks for.
    assert_eq!(
        kubelet_root_of(&rendered),
        ["/var/lib/kubelet"; 3].map(String::from)
    );
    let agent = &object(&rendered, "DaemonSet", "stash-agent")["spec"]["template"]["spec"];
    assert_eq!(
        agent["tolerations"],
        json!([{"operator": "Exists"}]),
        "the agent must tolerate every taint"
    );
    let c = &agent["containers"][0];
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_agent_least_privilege(&rendered);
    let controller =
        &object(&rendered, "Deployment", "stash-controller")["spec"]["template"]["spec"];
    assert_eq!(controller["securityContext"]["runAsNonRoot"], true);
    assert_eq!(controller["securityContext"]["runAsUser"], 65532);
    let c = &controller["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(
        object(&rendered, "Deployment", "stash-controller")["spec"]["replicas"],
        2
    );

    // Each kubelet-root component, used from an overlay as the README says,
    // moves all three places to its path.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (name, root) in KUBELET_ROOTS {
        let overlay = scratch.path().join(name);
        std::fs::create_dir(&overlay).unwrap();
        let base = relative(&overlay, &deploy);
        std::fs::write(
            overlay.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources: [{base}]\ncomponents: [{base}/kubelet-root/{name}]\n",
                base = base.display()
            ),
        )
        .unwrap();
        let rendered: Value = serde_json::from_str(&kubectl_ok(
            Some(&env),
            &[
                "apply",
                "--dry-run=server",
                "-k",
                overlay.to_str().unwrap(),
                "-o",
                "json",
            ],
        ))
        .unwrap();
        assert_eq!(
            kubelet_root_of(&rendered),
            [*root; 3].map(String::from),
            "component {name}"
        );
    }

    // The dry run does fail on a bad manifest: a value the API refuses, and
    // a misspelt field (kubectl validates strictly).
    let agent_yaml = std::fs::read_to_string(deploy.join("agent.yaml")).unwrap();
    let rbac_yaml = std::fs::read_to_string(deploy.join("controller-rbac.yaml")).unwrap();
    for (what, broken, expect) in [
        (
            "an unknown mount propagation",
            agent_yaml.replacen(
                "mountPropagation: HostToContainer",
                "mountPropagation: Sideways",
                1,
            ),
            "mountPropagation",
        ),
        (
            "a misspelt field",
            rbac_yaml.replacen("verbs:", "verb:", 1),
            "verb",
        ),
    ] {
        let path = scratch.path().join("broken.yaml");
        std::fs::write(&path, broken).unwrap();
        let out = kubectl(
            Some(&env),
            &["apply", "--dry-run=server", "-f", path.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expect),
            "the dry run accepted {what} (status {}): {stderr}",
            out.status
        );
    }
}

/// Issue 12, hole 9: the agent DaemonSet of a rendering (`{"items": ...}`)
/// is not privileged, has only the capabilities it needs, the runtime's
/// seccomp profile, no host `/`, stays off control-plane nodes, and serves
/// /metrics on its pod IP behind a NetworkPolicy.
fn assert_agent_least_privilege(list: &Value) {
    let pod = &object(list, "DaemonSet", "stash-agent")["spec"]["template"]["spec"];
    assert_ne!(pod["hostNetwork"], true);
    assert_ne!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "the agent runs privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        json!([
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID"
        ])
    );
    let seccomp = if sc["seccompProfile"].is_null() {
        &pod["securityContext"]["seccompProfile"]
    } else {
        &sc["seccompProfile"]
    };
    assert_eq!(seccomp["type"], "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert!(
        !host_paths
            .iter()
            .any(|p| p.trim_end_matches('/').is_empty()),
        "the host's / is mounted: {host_paths:?}"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    let kubelet = mounts.iter().find(|m| m["name"] == "kubelet-root").unwrap();
    assert_eq!(kubelet["mountPropagation"], "HostToContainer");
    assert_ne!(kubelet["readOnly"], true, "restores write into pod volumes");
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"],
        json!([{"matchExpressions": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]),
        "the agent must stay off control-plane nodes"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--metrics-addr=$(POD_IP):9464"), "{args:?}");
    let pod_ip = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("a POD_IP env");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let np = &object(list, "NetworkPolicy", "stash-agent-metrics")["spec"];
    assert_eq!(
        np["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "stash-agent"
    );
    assert_eq!(np["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["ingress"],
        json!([{"from": [{"namespaceSelector": {"matchLabels": {
                   "kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"port": 9464, "protocol": "TCP"}]}])
    );
}

/// Whether ServiceAccount `sa` of stash-system may `verb` the `resource`
/// (`name/subresource` allowed) of `group` in `namespace`.
async fn allowed(
    client: &Client,
    sa: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:stash-system:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:stash-system".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: namespace.map(Into::into),
                name: name.map(Into::into),
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

/// (verb, API group, resource or `resource/subresource`, object name).
type Access = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

async fn check_access(client: &Client, sa: &str, grants: &[Access], denies: &[Access]) {
    let mut wrong = Vec::new();
    for (want, list) in [(true, grants), (false, denies)] {
        for &(verb, group, resource, name) in list {
            // Cluster-scoped resources are asked without a namespace.
            let ns = match resource {
                "persistentvolumes" | "namespaces" | "nodes" => None,
                "leases" => Some("stash-system"),
                _ => Some("team"),
            };
            if allowed(client, sa, verb, group, resource, ns, name).await != want {
                wrong.push(format!(
                    "{} {verb} {group}/{resource}{}",
                    if want { "cannot" } else { "can" },
                    name.map(|n| format!(" {n}")).unwrap_or_default()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "ServiceAccount {sa}: {wrong:#?}");
}

#[tokio::test]
async fn rbac_grants_what_each_component_needs_and_the_controller_runs_under_it() {
    let env = Envtest::start().await;
    let client = env.client().await;
    let deploy = deploy_dir();
    kubectl_ok(
        Some(&env),
        &["apply", "--server-side", "-k", deploy.to_str().unwrap()],
    );

    check_access(
        &client,
        "stash-agent",
        &[
            ("get", "stash.rs", "backupsessions", None),
            ("list", "stash.rs", "backupsessions", None),
            ("watch", "stash.rs", "backupsessions", None),
            ("patch", "stash.rs", "backupsessions/status", None),
            ("get", "stash.rs", "restoresessions", None),
            ("list", "stash.rs", "restoresessions", None),
            ("watch", "stash.rs", "restoresessions", None),
            ("patch", "stash.rs", "restoresessions/status", None),
            ("get", "stash.rs", "repositories", None),
            // Check runs (Repository.spec.check): watched by label, claimed
            // and reported in the status.
            ("list", "stash.rs", "repositories", None),
            ("watch", "stash.rs", "repositories", None),
            ("patch", "stash.rs", "repositories/status", None),
            ("get", "stash.rs", "backupconfigurations", None),
            ("get", "", "namespaces", None),
            ("get", "", "pods", None),
            ("list", "", "pods", None),
            ("watch", "", "pods", None),
            ("get", "", "persistentvolumeclaims", None),
            ("get", "", "persistentvolumes", None),
            ("create", "events.k8s.io", "events", None),
            ("patch", "events.k8s.io", "events", None),
            // Maintenance Leases, one per repository (names not known in
            // advance: see deploy/agent-rbac.yaml for what this leaves).
            (
                "get",
                "coordination.k8s.io",
                "leases",
                Some("stash-maintenance-0123"),
            ),
            ("create", "coordination.k8s.io", "leases", None),
            (
                "update",
                "coordination.k8s.io",
                "leases",
                Some("stash-maintenance-0123"),
            ),
        ],
        &[
            ("list", "coordination.k8s.io", "leases", None),
            (
                "delete",
                "coordination.k8s.io",
                "leases",
                Some("stash-maintenance-0123"),
            ),
            // No Repository names it yet: no Role grants it (issue 12,
            // hole 9; the controller's Roles are checked below).
            ("get", "", "secrets", Some("repo-password")),
            ("list", "", "secrets", None),
            ("watch", "", "secrets", None),
            ("create", "", "secrets", None),
            ("update", "", "secrets", None),
            ("get", "", "configmaps", None),
            ("create", "", "pods", None),
            ("delete", "", "pods", None),
            ("create", "", "pods/exec", None),
            ("update", "", "persistentvolumeclaims", None),
            ("list", "", "persistentvolumes", None),
            ("get", "", "nodes", None),
            ("create", "stash.rs", "backupsessions", None),
            ("patch", "stash.rs", "backupsessions", None),
            ("delete", "stash.rs", "backupsessions", None),
            ("update", "stash.rs", "backupsessions/status", None),
            ("update", "stash.rs", "restoresessions", None),
            ("patch", "stash.rs", "repositories", None),
            ("update", "stash.rs", "repositories", None),
            ("update", "stash.rs", "repositories/status", None),
            ("list", "stash.rs", "backupconfigurations", None),
            ("patch", "stash.rs", "backupconfigurations", None),
            ("list", "", "namespaces", None),
        ],
    )
    .await;
    check_access(
        &client,
        "stash-controller",
        &[
            ("list", "stash.rs", "backupconfigurations", None),
            ("watch", "stash.rs", "backupconfigurations", None),
            ("create", "stash.rs", "backupconfigurations", None),
            ("update", "stash.rs", "backupconfigurations", None),
            ("delete", "stash.rs", "backupconfigurations", None),
            ("patch", "stash.rs", "backupconfigurations/status", None),
            ("create", "stash.rs", "backupsessions", None),
            ("delete", "stash.rs", "backupsessions", None),
            ("patch", "stash.rs", "backupsessions/status", None),
            ("watch", "stash.rs", "restoresessions", None),
            ("patch", "stash.rs", "restoresessions/status", None),
            ("get", "stash.rs", "repositories", None),
            ("patch", "stash.rs", "repositories/status", None),
            ("list", "", "pods", None),
            ("get", "", "nodes", None),
            ("list", "", "persistentvolumeclaims", None),
            ("get", "", "namespaces", Some("team")),
            ("list", "", "namespaces", None),
            ("get", "apps", "deployments", None),
            ("get", "apps", "statefulsets", None),
            ("get", "apps", "daemonsets", None),
            ("get", "apps", "replicasets", None),
            // Notifications' Secrets, and what the agents' Roles grant.
            ("get", "", "secrets", Some("repo-password")),
            ("create", "rbac.authorization.k8s.io", "roles", None),
            ("create", "rbac.authorization.k8s.io", "rolebindings", None),
            (
                "patch",
                "rbac.authorization.k8s.io",
                "roles",
                Some("stash-agent-secrets"),
            ),
            (
                "patch",
                "rbac.authorization.k8s.io",
                "rolebindings",
                Some("stash-agent-secrets"),
            ),
            (
                "delete",
                "rbac.authorization.k8s.io",
                "roles",
                Some("stash-agent-secrets"),
            ),
            (
                "delete",
                "rbac.authorization.k8s.io",
                "rolebindings",
                Some("stash-agent-secrets"),
            ),
            (
                "get",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                Some("stash-controller"),
            ),
            (
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                Some("stash-controller"),
            ),
            ("create", "events.k8s.io", "events", None),
            ("patch", "events.k8s.io", "events", None),
            // Issue 15: the Jobs for claims no pod mounts, their
            // ServiceAccount, Role and RoleBinding.
            ("create", "batch", "jobs", None),
            ("get", "batch", "jobs", None),
            ("create", "", "serviceaccounts", None),
            ("create", "rbac.authorization.k8s.io", "roles", None),
            ("create", "rbac.authorization.k8s.io", "rolebindings", None),
            ("delete", "rbac.authorization.k8s.io", "rolebindings", None),
            ("create", "coordination.k8s.io", "leases", None),
            (
                "get",
                "coordination.k8s.io",
                "leases",
                Some("stash-controller"),
            ),
            (
                "update",
                "coordination.k8s.io",
                "leases",
                Some("stash-controller"),
            ),
        ],
        &[
            ("list", "", "secrets", None),
            ("watch", "", "secrets", None),
            // Workloads are patched only with deploy/rollout/.
            ("patch", "apps", "deployments", None),
            ("patch", "apps", "statefulsets", None),
            ("patch", "apps", "daemonsets", None),
            // Only the agents' Secrets Role, and no way round the
            // escalation rule. (Deleting RoleBindings is granted without
            // names, for the per-Job bindings: deploy/SECURITY.md, Jobs.)
            ("patch", "rbac.authorization.k8s.io", "roles", Some("admin")),
            ("list", "rbac.authorization.k8s.io", "roles", None),
            ("escalate", "rbac.authorization.k8s.io", "roles", None),
            ("bind", "rbac.authorization.k8s.io", "roles", None),
            ("bind", "rbac.authorization.k8s.io", "clusterroles", None),
            (
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                None,
            ),
            ("create", "", "pods", None),
            ("create", "", "pods/exec", None),
            ("delete", "", "pods", None),
            ("update", "", "namespaces", None),
            ("list", "apps", "deployments", None),
            ("update", "apps", "deployments", None),
            ("delete", "apps", "statefulsets", None),
            ("patch", "apps", "replicasets", None),
            (
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                Some("someone-else"),
            ),
            (
                "create",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                None,
            ),
            (
                "patch",
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                Some("stash-controller"),
            ),
            ("create", "stash.rs", "restoresessions", None),
            // The Jobs' objects are created, never changed, and no
            // ClusterRole or token is ever made.
            ("update", "batch", "jobs", None),
            ("delete", "batch", "jobs", None),
            ("update", "rbac.authorization.k8s.io", "roles", None),
            ("escalate", "rbac.authorization.k8s.io", "roles", None),
            ("bind", "rbac.authorization.k8s.io", "roles", None),
            ("create", "rbac.authorization.k8s.io", "clusterroles", None),
            (
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                None,
            ),
            ("create", "", "serviceaccounts/token", None),
            ("create", "stash.rs", "repositories", None),
            ("delete", "stash.rs", "repositories", None),
            ("update", "stash.rs", "backupsessions/status", None),
            ("get", "coordination.k8s.io", "leases", Some("someone-else")),
            (
                "update",
                "coordination.k8s.io",
                "leases",
                Some("someone-else"),
            ),
            (
                "delete",
                "coordination.k8s.io",
                "leases",
                Some("stash-controller"),
            ),
        ],
    )
    .await;
    // The webhook's Secret: create it in stash-system only, get by name.
    for (verb, name, want) in [
        ("create", None, true),
        ("get", Some("stash-webhook-tls"), true),
        ("list", None, false),
        // Renewal before expiry replaces it.
        ("update", Some("stash-webhook-tls"), true),
        ("update", Some("repo-password"), false),
    ] {
        assert_eq!(
            allowed(
                &client,
                "stash-controller",
                verb,
                "",
                "secrets",
                Some("stash-system"),
                name
            )
            .await,
            want,
            "{verb} secrets {name:?} in stash-system"
        );
    }
    assert!(
        !allowed(
            &client,
            "stash-controller",
            "create",
            "",
            "secrets",
            Some("team"),
            None
        )
        .await,
        "the controller creates Secrets in stash-system only"
    );
    // The Lease rules are a Role of stash-system: nowhere else.
    assert!(
        !allowed(
            &client,
            "stash-controller",
            "create",
            "coordination.k8s.io",
            "leases",
            Some("team"),
            None
        )
        .await
    );

    // The real controller, with the ServiceAccount's token and nothing
    // else: it must lead, schedule, resolve sessions, check a cross-namespace
    // usage policy and publish Events without a single refusal.
    let token = kubectl_ok(
        Some(&env),
        &[
            "create",
            "token",
            "stash-controller",
            "-n",
            "stash-system",
            "--duration=1h",
        ],
    );
    let scratch = tempfile::tempdir().unwrap();
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::copy(env.kubeconfig(), &kubeconfig).unwrap();
    let sa_kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sa_kubectl(&[
        "config",
        "set-credentials",
        "stash-controller",
        &format!("--token={}", token.trim()),
    ]);
    sa_kubectl(&[
        "config",
        "set-context",
        "--current",
        "--user=stash-controller",
    ]);

    namespace(&client, "team", &[("backup", "yes")]).await;
    namespace(&client, "vault", &[]).await;
    namespace(&client, "elsewhere", &[]).await;
    repository(&client, "team", "main", None).await;
    create::<stash_api::Repository>(
        &client,
        "team",
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
               "metadata": {"name": "spare"},
               "spec": {"url": "s3:minio:9000/spare", "credentialsSecret": "spare-keys",
                        "passwordSecret": {"name": "spare-password"}}}),
    )
    .await;
    repository(
        &client,
        "vault",
        "shared",
        Some(json!({"allowedNamespaces": {"from": "Selector", "selector": {"matchLabels": {"backup": "yes"}}}})),
    )
    .await;
    db_pod(&client, "team", "db-0", "node-a").await;
    for (name, repo) in [
        ("local", json!({"name": "main"})),
        ("remote", json!({"name": "shared", "namespace": "vault"})),
    ] {
        configuration(
            &client,
            "team",
            name,
            json!({
                "schedule": "*/2 * * * * *",
                "target": {"selector": {"matchLabels": {"app": "db"}}},
                "repository": repo,
                "concurrencyPolicy": "Allow",
            }),
        )
        .await;
    }

    let log = scratch.path().join("controller.log");
    let mut controller = Command::new(env!("CARGO_BIN_EXE_stash-controller"))
        .env("KUBECONFIG", &kubeconfig)
        .env("STASH_LOG", "info")
        .env("NO_COLOR", "1")
        .env("POD_NAME", "stash-controller-test")
        .env("POD_NAMESPACE", "stash-system")
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--webhook-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start stash-controller");

    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut done = false;
    while !done && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let list = sessions(&client, "team").await;
        let resolved = |cfg: &str| {
            list.iter().any(|s| {
                s.spec.backup_configuration == cfg
                    && s.status.as_ref().is_some_and(|st| !st.items.is_empty())
            })
        };
        let events = Api::<Event>::namespaced(client.clone(), "team")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let scheduled_event = events.iter().any(|e| {
            e.reason.as_deref() == Some("Scheduled")
                && e.reporting_controller.as_deref() == Some("stash-controller")
        });
        // The webhook's certificate made and trusted under the same RBAC.
        let ca_bundle = Api::<
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        >::all(client.clone())
        .get("stash-controller")
        .await
        .unwrap()
        .webhooks
        .unwrap_or_default()
        .iter()
        .all(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .is_some_and(|b| !b.0.is_empty())
        });
        done = resolved("local") && resolved("remote") && scheduled_event && ca_bundle;
    }
    // Issue 12, hole 9: the agent gets exactly the Secrets that Repositories
    // name, in their namespaces, once the controller (under its own RBAC:
    // the escalation rule) has made the Roles; never a list.
    let agent_may = |verb: &'static str, ns: &'static str, name: Option<&'static str>| {
        let client = client.clone();
        async move { allowed(&client, "stash-agent", verb, "", "secrets", Some(ns), name).await }
    };
    let granted = tokio::time::timeout(Duration::from_secs(20), async {
        while !(agent_may("get", "team", Some("repo-password")).await
            && agent_may("get", "team", Some("spare-keys")).await
            && agent_may("get", "team", Some("spare-password")).await
            && agent_may("get", "vault", Some("repo-password")).await)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let mut wrong = Vec::new();
    for (verb, ns, name) in [
        ("get", "team", Some("not-named")),
        ("get", "vault", Some("spare-keys")),
        ("get", "elsewhere", Some("repo-password")),
        ("get", "stash-system", Some("repo-password")),
        ("list", "team", None),
        ("watch", "team", None),
        ("list", "vault", None),
    ] {
        if agent_may(verb, ns, name).await {
            wrong.push(format!("{verb} secrets {name:?} in {ns}"));
        }
    }
    // A Repository deleted: its Secrets leave the Role, the others stay.
    Api::<stash_api::Repository>::namespaced(client.clone(), "team")
        .delete("spare", &Default::default())
        .await
        .unwrap();
    let revoked = tokio::time::timeout(Duration::from_secs(20), async {
        while agent_may("get", "team", Some("spare-keys")).await
            || agent_may("get", "team", Some("spare-password")).await
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let kept = agent_may("get", "team", Some("repo-password")).await;
    let role = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), "team")
        .get_opt("stash-agent-secrets")
        .await
        .unwrap();
    let _ = controller.kill();
    let _ = controller.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    assert!(
        done,
        "within 40 s the controller did not resolve sessions of both configurations, \
         publish a Scheduled Event and set the webhook's caBundle; its log ends:\n{tail}"
    );
    assert!(
        !text.to_lowercase().contains("forbidden"),
        "the controller was refused something by RBAC:\n{text}"
    );
    assert!(
        text.contains("acquired the leadership Lease"),
        "no leadership in the log:\n{text}"
    );
    assert!(
        granted.is_ok(),
        "within 20 s the agent was not granted the Secrets Repositories name; log:\n{tail}"
    );
    assert!(wrong.is_empty(), "the agent may: {wrong:?}");
    assert!(
        revoked.is_ok(),
        "the Secrets of a deleted Repository are still granted"
    );
    assert!(kept, "the Secret of a remaining Repository was revoked");
    let role = role.expect("the Role stays while a Repository of team names a Secret");
    assert_eq!(
        role.rules.unwrap()[0].resource_names.as_deref(),
        Some(&["repo-password".to_owned()][..])
    );
    let owners: Vec<String> = role
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    assert_eq!(owners, ["Repository/main"]);
}

/// The `helm` that `hack/helm.sh` builds (`$STASH_HELM` to use another).
fn helm() -> PathBuf {
    if let Some(h) = std::env::var_os("STASH_HELM") {
        return PathBuf::from(h);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/helm.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--path")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "{} is missing: run `bash hack/helm.sh` (hack/test.sh does) to build helm, \
         or set STASH_HELM",
        path.display()
    );
    path
}

/// `helm template` of the chart with `args`; Err(stderr) when it fails.
fn helm_template(args: &[&str]) -> Result<String, String> {
    let chart = deploy_dir().join("helm/stash");
    let out = Command::new(helm())
        .args(["template", "stash"])
        .arg(&chart)
        .args(["--namespace", "stash-system", "--include-crds"])
        // The envtest apiserver's; a helm built without release ldflags
        // would assume 1.20, below the chart's kubeVersion.
        .args(["--kube-version", "1.36.0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Where `a` and `b` first differ (a JSON pointer and both values), if they
/// do. Numbers compare by value: YAML's `1000.0` and `1000` are one number.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{at}/{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{at}: {a} (helm) vs {b} (kustomize)")),
    }
}

/// The objects of a multi-document YAML stream, by `Kind/name`.
fn objects(yaml: &str) -> std::collections::BTreeMap<String, Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            (!v.is_null()).then_some(v)
        })
        .map(|v| {
            let key = format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            );
            (key, v)
        })
        .collect()
}

#[tokio::test]
async fn helm_chart_renders_the_kustomize_objects_and_its_values() {
    let lint = Command::new(helm())
        .args(["lint", "--strict", "--kube-version", "1.36.0"])
        .arg(deploy_dir().join("helm/stash"))
        .output()
        .expect("run helm lint");
    assert!(
        lint.status.success(),
        "helm lint --strict failed:\n{}",
        String::from_utf8_lossy(&lint.stdout)
    );

    // With the defaults: the kustomize base's objects.
    let deploy = deploy_dir();
    assert_helm_renders_kustomize(&[], &deploy);

    // The values land where they must.
    let root = "/var/snap/microk8s/common/var/lib/kubelet";
    let rendered = helm_template(&[
        "--set",
        &format!("kubeletRoot={root}"),
        "--set",
        "hostPathAllowList={/srv/data,/mnt/shared}",
        "--set",
        "controller.replicas=3",
        "--set",
        "image.agent.repository=registry.example.com/stash-agent",
        "--set",
        "image.agent.tag=1.2.3",
        "--set",
        "agent.resources.limits.memory=4Gi",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let list = json!({"items": objects(&rendered).into_values().collect::<Vec<_>>()});
    assert_eq!(kubelet_root_of(&list), [root; 3].map(String::from));
    let agent =
        &object(&list, "DaemonSet", "stash-agent")["spec"]["template"]["spec"]["containers"][0];
    let controller = &object(&list, "Deployment", "stash-controller")["spec"];
    for args in [
        &agent["args"],
        &controller["template"]["spec"]["containers"][0]["args"],
    ] {
        let args: Vec<&str> = args
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.contains(&"--allow-host-path=/srv/data")
                && args.contains(&"--allow-host-path=/mnt/shared"),
            "{args:?}"
        );
    }
    // Each allowed directory, and only it, mounted read-write at /host/DIR.
    let pod = &object(&list, "DaemonSet", "stash-agent")["spec"]["template"]["spec"];
    let host_volumes: Vec<(String, String)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] != "kubelet-root")
        .filter_map(|v| {
            let path = v["hostPath"]["path"].as_str()?;
            let mount = agent["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == v["name"])
                .expect("each host volume is mounted");
            assert_ne!(mount["readOnly"], true);
            assert_eq!(mount["mountPropagation"], "HostToContainer");
            Some((path.to_owned(), mount["mountPath"].as_str()?.to_owned()))
        })
        .collect();
    assert_eq!(
        host_volumes,
        [
            ("/srv/data".to_owned(), "/host/srv/data".to_owned()),
            ("/mnt/shared".to_owned(), "/host/mnt/shared".to_owned())
        ]
    );
    assert_eq!(controller["replicas"], 3);
    assert_eq!(agent["image"], "registry.example.com/stash-agent:1.2.3");
    assert_eq!(agent["resources"]["limits"]["memory"], "4Gi");

    // And the server accepts them.
    let env = Envtest::start().await;
    kubectl_ok(
        Some(&env),
        &[
            "apply",
            "--server-side",
            "-f",
            &format!("{}/crds", deploy.display()),
        ],
    );
    kubectl_ok(
        Some(&env),
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
    );
    kubectl_ok(Some(&env), &["create", "namespace", "stash-system"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &rendered).unwrap();
    kubectl_ok(
        Some(&env),
        &[
            "apply",
            "--dry-run=server",
            "-f",
            file.path().to_str().unwrap(),
        ],
    );

    // Opt-ins: control-plane nodes, more capabilities, no NetworkPolicy.
    let rendered = helm_template(&[
        "--set",
        "agent.runOnControlPlane=true",
        "--set",
        "agent.extraCapabilities={MKNOD}",
        "--set",
        "agent.metrics.networkPolicy=false",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let objs = objects(&rendered);
    assert!(!objs.contains_key("NetworkPolicy/stash-agent-metrics"));
    let pod = &objs["DaemonSet/stash-agent"]["spec"]["template"]["spec"];
    assert!(pod["affinity"].is_null(), "{}", pod["affinity"]);
    assert_eq!(
        pod["containers"][0]["securityContext"]["capabilities"]["add"],
        json!([
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "MKNOD"
        ])
    );

    // A relative kubelet root is refused with the reason.
    let err = helm_template(&["--set", "kubeletRoot=var/lib/kubelet"]).unwrap_err();
    assert!(err.contains("is not an absolute path"), "{err}");
}

/// `helm template` with `args` renders the objects `kubectl kustomize dir`
/// does, less the Namespace (Helm installs into an existing or
/// --create-namespace one), plus Helm's own labels.
fn assert_helm_renders_kustomize(args: &[&str], dir: &Path) {
    let mut from_helm = objects(&helm_template(args).unwrap_or_else(|e| panic!("{e}")));
    for o in from_helm.values_mut() {
        if let Some(labels) = o
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            assert_eq!(
                labels.remove("app.kubernetes.io/managed-by"),
                Some(json!("Helm"))
            );
            labels.remove("helm.sh/chart");
        }
    }
    let mut from_kustomize = objects(&kubectl_ok(None, &["kustomize", dir.to_str().unwrap()]));
    assert!(from_kustomize.remove("Namespace/stash-system").is_some());
    let keys =
        |m: &std::collections::BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&from_helm), keys(&from_kustomize), "helm {args:?}");
    for (key, k) in &from_kustomize {
        if let Some(diff) = first_difference(&from_helm[key], k, "") {
            panic!(
                "{key} differs between deploy/helm/stash {args:?} and {} at {diff}",
                dir.display()
            );
        }
    }
}

/// A kustomize overlay in `scratch` of deploy/ with `components`.
fn overlay(scratch: &Path, components: &[&str]) -> PathBuf {
    let deploy = deploy_dir();
    let rel = relative(scratch, &deploy);
    let list: Vec<String> = components
        .iter()
        .map(|c| format!("{}/{c}", rel.display()))
        .collect();
    std::fs::write(
        scratch.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{}]\ncomponents: [{}]\n",
            rel.display(),
            list.join(", ")
        ),
    )
    .unwrap();
    scratch.to_owned()
}

/// Every rule of every ClusterRole and Role bound to the controller's
/// ServiceAccount that lets it change workloads.
fn workload_patch_rules(dir: &Path) -> Vec<String> {
    let yaml = kubectl_ok(None, &["kustomize", dir.to_str().unwrap()]);
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" && v["kind"] != "Role" {
            continue;
        }
        for r in v["rules"].as_array().into_iter().flatten() {
            let has = |field: &str, x: &str| {
                r[field]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|y| y == x || y == "*"))
            };
            if has("apiGroups", "apps")
                && ["deployments", "statefulsets", "daemonsets"]
                    .iter()
                    .any(|k| has("resources", k))
                && ["patch", "update"].iter().any(|k| has("verbs", k))
            {
                out.push(format!(
                    "{} {}: {r}",
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                ));
            }
        }
    }
    out
}

/// The controller container's args of a `kubectl kustomize` rendering.
fn controller_args(dir: &Path) -> Vec<String> {
    let list = json!({"items": objects(&kubectl_ok(None, &["kustomize", dir.to_str().unwrap()]))
        .into_values()
        .collect::<Vec<_>>()});
    object(&list, "Deployment", "stash-controller")["spec"]["template"]["spec"]["containers"][0]
        ["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Issue 12, hole 9: no permission to change workloads without the rollout
/// component; with it (kustomize or Helm alike) the flag, the grant, and the
/// policy keeping the controller out of its own namespace.
#[test]
fn workloads_are_patched_only_with_the_rollout_component() {
    let deploy = deploy_dir();
    assert_eq!(workload_patch_rules(&deploy), Vec::<String>::new());
    assert!(!controller_args(&deploy).contains(&"--rollout-restores".to_owned()));

    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let with = overlay(scratch.path(), &["rollout"]);
    let rules = workload_patch_rules(&with);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0].starts_with("ClusterRole stash-controller-rollout:"),
        "{rules:?}"
    );
    assert!(controller_args(&with).contains(&"--rollout-restores".to_owned()));
    let rendered = objects(&kubectl_ok(None, &["kustomize", with.to_str().unwrap()]));
    for key in [
        "ClusterRoleBinding/stash-controller-rollout",
        "ValidatingAdmissionPolicy/stash-controller-not-in-own-namespace",
        "ValidatingAdmissionPolicyBinding/stash-controller-not-in-own-namespace",
    ] {
        assert!(rendered.contains_key(key), "the component lacks {key}");
    }

    // The chart's rollout.enabled renders the same objects.
    assert_helm_renders_kustomize(&["--set", "rollout.enabled=true"], &with);
}

/// Issue 12, hole 9, on the real apiserver: with the rollout component the
/// controller's ServiceAccount may restart a workload of a tenant, but the
/// apiserver refuses any change by it to a workload in stash-system.
#[tokio::test]
async fn with_rollouts_the_controller_still_cannot_change_its_own_namespace() {
    let env = Envtest::start().await;
    let client = env.client().await;
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let with = overlay(scratch.path(), &["rollout"]);
    kubectl_ok(
        Some(&env),
        &["apply", "--server-side", "-k", with.to_str().unwrap()],
    );
    namespace(&client, "team", &[]).await;
    let deployment = |name: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    };
    create::<k8s_openapi::api::apps::v1::Deployment>(&client, "team", deployment("web")).await;
    // stash-controller exists in stash-system already (the manifests).
    let patch = r#"{"spec":{"template":{"metadata":{"labels":{"stash.rs/restore-session":"r"}}}}}"#;
    let as_controller = |ns: &str, name: &str| {
        kubectl(
            Some(&env),
            &[
                "--as=system:serviceaccount:stash-system:stash-controller",
                "patch",
                "deployment",
                name,
                "-n",
                ns,
                "--type=merge",
                "-p",
                patch,
            ],
        )
    };
    let out = as_controller("team", "web");
    assert!(
        out.status.success(),
        "the rollout RBAC does not let the controller patch a tenant's Deployment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The policy takes effect once the apiserver has compiled it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let out = as_controller("stash-system", "stash-controller");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            break stderr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller's ServiceAccount patched its own Deployment for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        refusal.contains("never changes workloads in its own namespace"),
        "{refusal}"
    );
    for (kind, name) in [
        ("daemonset", "stash-agent"),
        ("deployment", "stash-controller"),
    ] {
        let out = kubectl(
            Some(&env),
            &[
                "--as=system:serviceaccount:stash-system:stash-controller",
                "patch",
                kind,
                name,
                "-n",
                "stash-system",
                "--type=merge",
                "-p",
                patch,
            ],
        );
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("never changes workloads"),
            "the controller patched {kind} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
