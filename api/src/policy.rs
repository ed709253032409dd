//! Who may use what: a BackupConfiguration or RestoreSession uses pods,
//! PVCs and Secrets of its own namespace only (its spec cannot even name
//! another), a Repository of another namespace only if the Repository's
//! usage policy admits the user's namespace, and hostPath volumes only
//! under the controller's allow-list.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::{NamespacesFrom, Repository};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a Repository may not be used: the condition reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason for the condition.
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// Whether `repo` admits a user in namespace `user_ns` whose labels are
/// `ns_labels`. `user` names the using object, for the message.
pub fn repository_admits(
    repo: &Repository,
    user_ns: &str,
    ns_labels: &BTreeMap<String, String>,
    user: &str,
) -> Result<(), Refusal> {
    let repo_ns = repo.metadata.namespace.as_deref().unwrap_or_default();
    let repo_name = repo.metadata.name.as_deref().unwrap_or_default();
    if repo_ns == user_ns {
        return Ok(());
    }
    let allowed = repo
        .spec
        .usage_policy
        .as_ref()
        .map(|p| &p.allowed_namespaces);
    let admitted = match allowed.map(|a| a.from).unwrap_or_default() {
        NamespacesFrom::Same => false,
        NamespacesFrom::All => true,
        NamespacesFrom::Selector => allowed
            .and_then(|a| a.selector.as_ref())
            .is_some_and(|s| selector_matches(s, ns_labels)),
    };
    if admitted {
        Ok(())
    } else {
        Err(Refusal {
            reason: "RepositoryNotAllowed",
            message: format!(
                "{user} in namespace {user_ns} may not use Repository {repo_ns}/{repo_name}: \
                 its spec.usagePolicy.allowedNamespaces does not admit namespace {user_ns} \
                 (ask its owner to admit it, or use a Repository in {user_ns})"
            ),
        })
    }
}

/// Whether `labels` match `selector` (matchLabels and matchExpressions).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// The label selector as a query string for a list call
/// (`a=b,c in (d,e),!f`).
pub fn selector_query(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            // The apiserver validates operators; an unknown one matches nothing.
            other => format!("{} {other} ()", e.key),
        });
    }
    parts.join(",")
}

/// The host directories hostPath volumes may be backed up from.
#[derive(Debug, Clone, Default)]
pub struct HostPathAllowList {
    /// Normalised absolute prefixes.
    prefixes: Vec<PathBuf>,
}

impl HostPathAllowList {
    /// An allow-list of the given absolute directories.
    pub fn new(prefixes: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            prefixes: prefixes.into_iter().map(|p| normalise(&p)).collect(),
        }
    }

    /// Whether `path` lies inside an allowed directory. `..` is resolved
    /// lexically first, so `/srv/data/../../etc` is not inside `/srv/data`.
    pub fn allows(&self, path: &str) -> bool {
        let path = Path::new(path);
        if !path.is_absolute() {
            return false;
        }
        let path = normalise(path);
        self.prefixes.iter().any(|p| path.starts_with(p))
    }
}

fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AllowedNamespaces, RepositorySpec, SecretKeyReference, UsagePolicy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn repo(ns: &str, from: NamespacesFrom, selector: Option<LabelSelector>) -> Repository {
        let mut r = Repository::new(
            "main",
            RepositorySpec {
                url: "/srv".into(),
                credentials_secret: None,
                password_secret: SecretKeyReference {
                    name: "pw".into(),
                    key: "password".into(),
                },
                usage_policy: Some(UsagePolicy {
                    allowed_namespaces: AllowedNamespaces { from, selector },
                }),
            },
        );
        r.metadata.namespace = Some(ns.into());
        r
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn same_namespace_only_by_default() {
        let r = repo("infra", NamespacesFrom::Same, None);
        assert!(repository_admits(&r, "infra", &labels(&[]), "x").is_ok());
        let refusal =
            repository_admits(&r, "team", &labels(&[]), "BackupConfiguration db").unwrap_err();
        assert_eq!(refusal.reason, "RepositoryNotAllowed");
        assert!(
            refusal
                .message
                .contains("may not use Repository infra/main"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn all_and_selector() {
        assert!(repository_admits(
            &repo("infra", NamespacesFrom::All, None),
            "team",
            &labels(&[]),
            "x"
        )
        .is_ok());
        let sel = LabelSelector {
            match_labels: Some(labels(&[("backup", "yes")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["dev".into()]),
            }]),
        };
        let r = repo("infra", NamespacesFrom::Selector, Some(sel.clone()));
        assert!(repository_admits(&r, "team", &labels(&[("backup", "yes")]), "x").is_ok());
        assert!(repository_admits(
            &r,
            "team",
            &labels(&[("backup", "yes"), ("tier", "dev")]),
            "x"
        )
        .is_err());
        assert!(repository_admits(&r, "team", &labels(&[]), "x").is_err());
        assert_eq!(selector_query(&sel), "backup=yes,tier notin (dev)");
    }

    #[test]
    fn host_paths() {
        let allow = HostPathAllowList::new([PathBuf::from("/srv/data/")]);
        assert!(allow.allows("/srv/data"));
        assert!(allow.allows("/srv/data/app/x"));
        assert!(!allow.allows("/srv/database"));
        assert!(!allow.allows("/srv/data/../../etc"));
        assert!(!allow.allows("srv/data"));
        assert!(!HostPathAllowList::default().allows("/"));
    }
}
