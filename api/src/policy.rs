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

/// The host directories hostPath volumes, and hostPath PersistentVolumes,
/// may be backed up from and restored into: some for every namespace,
/// some for one namespace only.
///
/// [`HostPathAllowList::allows`] judges a path lexically (`..` resolved
/// first), which is all the controller, not running on the node, can do.
/// The agent also judges the path as the host resolves it
/// ([`resolve_on_host`]): an allowed directory may contain symlinks the
/// admin made (tenants cannot create host symlinks, but the path of a
/// hostPath PV is theirs to choose), and what the link points to must be
/// inside an allowed directory too.
#[derive(Debug, Clone, Default)]
pub struct HostPathAllowList {
    /// Normalised absolute prefixes, with the one namespace they are for
    /// (`None`: every namespace).
    entries: Vec<(Option<String>, PathBuf)>,
}

impl HostPathAllowList {
    /// An allow-list of the given absolute directories, for every namespace.
    pub fn new(prefixes: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            entries: prefixes
                .into_iter()
                .map(|p| (None, normalise(&p)))
                .collect(),
        }
    }

    /// An allow-list from flag values: `DIR` (every namespace) or
    /// `NAMESPACE=DIR`.
    pub fn parse<'a>(specs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut entries = Vec::new();
        for spec in specs {
            let (ns, dir) = match spec.split_once('=') {
                Some((ns, dir)) if !ns.is_empty() && !ns.contains('/') => {
                    (Some(ns.to_owned()), dir)
                }
                _ => (None, spec),
            };
            let dir = Path::new(dir);
            if !dir.is_absolute() {
                return Err(format!(
                    "allowed host path {spec:?}: {} is not an absolute path",
                    dir.display()
                ));
            }
            entries.push((ns, normalise(dir)));
        }
        Ok(Self { entries })
    }

    /// Whether `path` lies inside a directory allowed for namespace `ns`.
    /// `..` is resolved lexically first, so `/srv/data/../../etc` is not
    /// inside `/srv/data`.
    pub fn allows(&self, ns: &str, path: &str) -> bool {
        let path = Path::new(path);
        if !path.is_absolute() {
            return false;
        }
        self.allows_normalised(ns, &normalise(path))
    }

    fn allows_normalised(&self, ns: &str, path: &Path) -> bool {
        self.entries
            .iter()
            .any(|(n, p)| n.as_deref().is_none_or(|n| n == ns) && path.starts_with(p))
    }

    /// Where host path `path` is, as the host sees it, under `host_root`
    /// (the host's `/` as mounted here), if both `path` and what it
    /// resolves to lie inside directories allowed for `ns`; otherwise why
    /// not. Symlinks are followed as the host would follow them: absolute
    /// targets from the host's root, never out of `host_root`.
    pub fn resolve(&self, ns: &str, host_root: &Path, path: &str) -> Result<PathBuf, String> {
        if !self.allows(ns, path) {
            return Err(format!(
                "host path {path:?} is outside the allowed host paths for namespace {ns} (--allow-host-path)"
            ));
        }
        let resolved = resolve_on_host(host_root, Path::new(path))?;
        if !self.allows_normalised(ns, &resolved) {
            return Err(format!(
                "host path {path:?} resolves to {} on the host, outside the allowed host paths for namespace {ns} (--allow-host-path)",
                resolved.display()
            ));
        }
        let mut out = host_root.to_path_buf();
        out.extend(resolved.components().skip(1));
        Ok(out)
    }
}

/// `path` with every symlink resolved as the host resolves it, where the
/// host's `/` is `host_root`: an absolute link target starts again at the
/// host's root, `..` never climbs above it. Components that do not exist
/// are kept as they are. At most 40 links, as Linux.
pub fn resolve_on_host(host_root: &Path, path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("host path {} is not absolute", path.display()));
    }
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut done = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&c);
        let mut seen = host_root.to_path_buf();
        seen.extend(candidate.components().skip(1));
        match std::fs::symlink_metadata(&seen) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!(
                        "host path {}: too many levels of symbolic links",
                        path.display()
                    ));
                }
                let target = std::fs::read_link(&seen)
                    .map_err(|e| format!("reading the link {}: {e}", candidate.display()))?;
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push(n.to_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done = candidate,
        }
    }
    Ok(done)
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
                maintenance: None,
                check: None,
                read_only: None,
                adopt: None,
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
        assert!(allow.allows("a", "/srv/data"));
        assert!(allow.allows("a", "/srv/data/app/x"));
        assert!(!allow.allows("a", "/srv/database"));
        assert!(!allow.allows("a", "/srv/data/../../etc"));
        assert!(!allow.allows("a", "srv/data"));
        assert!(!HostPathAllowList::default().allows("a", "/"));
    }

    #[test]
    fn host_paths_per_namespace() {
        let allow = HostPathAllowList::parse(["/srv/shared", "team-a=/srv/a"]).unwrap();
        assert!(allow.allows("team-a", "/srv/a/x"));
        assert!(!allow.allows("team-b", "/srv/a/x"));
        assert!(allow.allows("team-b", "/srv/shared/x"));
        assert!(HostPathAllowList::parse(["team-a=srv"]).is_err());
    }

    /// The host's view: a link the admin made inside an allowed directory
    /// may point elsewhere inside it, not outside; an absolute target is
    /// the host's, not the agent's.
    #[test]
    fn host_paths_are_judged_where_they_resolve_on_the_host() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        for d in ["srv/data/real", "srv/other", "etc"] {
            std::fs::create_dir_all(h.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("/srv/data/real", h.join("srv/data/abs")).unwrap();
        std::os::unix::fs::symlink("real", h.join("srv/data/rel")).unwrap();
        std::os::unix::fs::symlink("/etc", h.join("srv/data/etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", h.join("srv/data/up")).unwrap();
        std::os::unix::fs::symlink("/srv/data", h.join("srv/data-link")).unwrap();
        let allow = HostPathAllowList::new([PathBuf::from("/srv/data")]);
        assert_eq!(
            allow.resolve("a", h, "/srv/data/abs/x").unwrap(),
            h.join("srv/data/real/x")
        );
        assert_eq!(
            allow.resolve("a", h, "/srv/data/rel").unwrap(),
            h.join("srv/data/real")
        );
        let e = allow.resolve("a", h, "/srv/data/etc").unwrap_err();
        assert!(e.contains("resolves to /etc"), "{e}");
        let e = allow.resolve("a", h, "/srv/data/up/etc").unwrap_err();
        assert!(e.contains("resolves to /etc"), "{e}");
        // The admin's allowed directory itself may be a link.
        let via_link = HostPathAllowList::new([PathBuf::from("/srv/data-link")]);
        assert!(via_link.resolve("a", h, "/srv/data-link/x").is_err());
        let both =
            HostPathAllowList::new([PathBuf::from("/srv/data-link"), PathBuf::from("/srv/data")]);
        assert_eq!(
            both.resolve("a", h, "/srv/data-link/x").unwrap(),
            h.join("srv/data/x")
        );
    }
}
