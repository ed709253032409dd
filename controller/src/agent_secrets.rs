//! The node agents' access to Secrets (issue 12, hole 9): the agent's
//! ServiceAccount has no Secrets rule in any ClusterRole. In every
//! namespace that holds Repositories, the controller keeps a Role
//! [`ROLE`] granting `get` on exactly the Secrets those Repositories name
//! (`passwordSecret`, `credentialsSecret`, by `resourceNames`) and a
//! RoleBinding of the same name to the agent's ServiceAccount. A name
//! leaves the Role when no Repository of the namespace names it any more
//! (a Repository being deleted keeps its names while its `stash.rs/in-use`
//! finalizer holds it: its last sessions still need them); the Role and
//! its binding go when none is left.
//!
//! The Role and the RoleBinding are owned (`ownerReferences`) by the
//! Repositories they serve, so the garbage collector removes them even if
//! a Repository is deleted while this controller does not run.
//!
//! RBAC's escalation rule lets the controller grant only what it holds
//! itself: it therefore has cluster-wide `get` on Secrets
//! (`deploy/controller-rbac.yaml`), which is this design's residual risk.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use stash_api::Repository;

use crate::error::{kube_err, Result};
use crate::Context;

/// Name of the Role and the RoleBinding in each namespace with Repositories.
pub const ROLE: &str = "stash-agent-secrets";

/// Field manager of the server-side applies.
const MANAGER: &str = "stash-controller";

/// The ServiceAccount of the node agents, which the Roles are bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAccount {
    /// Its namespace (the controller's, `stash-system`).
    pub namespace: String,
    /// Its name (`stash-agent`).
    pub name: String,
}

impl Default for AgentAccount {
    fn default() -> Self {
        AgentAccount {
            namespace: "stash-system".into(),
            name: "stash-agent".into(),
        }
    }
}

/// Serialises [`sync`]: each sync reads the Repository cache inside the
/// lock, so a later write never carries an older view than the one before.
#[derive(Debug, Default)]
pub struct SyncLock(tokio::sync::Mutex<()>);

/// The Secrets `repo` names (in its own namespace).
pub fn secret_names(repo: &Repository) -> impl Iterator<Item = &str> {
    std::iter::once(repo.spec.password_secret.name.as_str())
        .chain(repo.spec.credentials_secret.as_deref())
        .filter(|n| !n.is_empty())
}

/// The Role for `names` in `ns`, owned by `owners`.
pub fn role(ns: &str, names: &BTreeSet<String>, owners: Vec<OwnerReference>) -> Role {
    Role {
        metadata: metadata(ns, owners),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(names.iter().cloned().collect()),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
    }
}

/// The RoleBinding of [`ROLE`] in `ns` to `agent`.
pub fn binding(ns: &str, agent: &AgentAccount, owners: Vec<OwnerReference>) -> RoleBinding {
    RoleBinding {
        metadata: metadata(ns, owners),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: agent.name.clone(),
            namespace: Some(agent.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

fn metadata(ns: &str, owners: Vec<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(ROLE.into()),
        namespace: Some(ns.into()),
        labels: Some(
            [
                ("app.kubernetes.io/managed-by", "stash-controller"),
                ("app.kubernetes.io/part-of", "stash"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ),
        owner_references: Some(owners),
        ..ObjectMeta::default()
    }
}

fn owner(repo: &Repository) -> OwnerReference {
    OwnerReference {
        api_version: "stash.rs/v1alpha1".into(),
        kind: "Repository".into(),
        name: repo.name_any(),
        uid: repo.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

/// Makes the Role and RoleBinding [`ROLE`] of `ns` grant the agents `get`
/// on the Secrets named by the Repositories of `ns` (in the cache) that
/// `needs_secrets` (the caller, [`crate::finalizers`], knows which still
/// do), and deletes both when no name is left. Does nothing without
/// [`crate::Settings::agent_account`].
pub async fn sync(
    ctx: &Context,
    ns: &str,
    needs_secrets: impl Fn(&Repository) -> bool,
) -> Result<()> {
    let Some(agent) = &ctx.settings.agent_account else {
        return Ok(());
    };
    let _serial = ctx.agent_secrets.0.lock().await;
    let repos: Vec<Arc<Repository>> = ctx
        .repositories
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| needs_secrets(r))
        .collect();
    let names: BTreeSet<String> = repos
        .iter()
        .flat_map(|r| secret_names(r))
        .map(str::to_owned)
        .collect();
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
    if names.is_empty() {
        // The binding first: a Role without a binding grants nothing.
        for result in [
            bindings
                .delete(ROLE, &DeleteParams::default())
                .await
                .map(|_| ()),
            roles
                .delete(ROLE, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_err("delete agent Secrets Role", ns, ROLE)(e)),
            }
        }
        return Ok(());
    }
    let owners: Vec<OwnerReference> = repos.iter().map(|r| owner(r)).collect();
    let apply = PatchParams::apply(MANAGER).force();
    // The Role first: the binding then grants exactly its names.
    roles
        .patch(
            ROLE,
            &apply,
            &Patch::Apply(&role(ns, &names, owners.clone())),
        )
        .await
        .map_err(kube_err("apply agent Secrets Role", ns, ROLE))?;
    bindings
        .patch(ROLE, &apply, &Patch::Apply(&binding(ns, agent, owners)))
        .await
        .map_err(kube_err("apply agent Secrets RoleBinding", ns, ROLE))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_names_its_password_and_credentials_secrets() {
        let repo: Repository = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
            "metadata": {"name": "r", "namespace": "team"},
            "spec": {"url": "s3:h/b", "credentialsSecret": "s3-keys",
                     "passwordSecret": {"name": "pw", "key": "password"}},
        }))
        .unwrap();
        assert_eq!(secret_names(&repo).collect::<Vec<_>>(), ["pw", "s3-keys"]);
        let names = secret_names(&repo).map(str::to_owned).collect();
        let rule = &role("team", &names, vec![]).rules.unwrap()[0];
        assert_eq!(rule.verbs, ["get"]);
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["pw".to_owned(), "s3-keys".to_owned()][..])
        );
    }
}
