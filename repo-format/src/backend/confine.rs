//! What a repository described by someone less privileged than the opening
//! process may use.
//!
//! The node agent is root on its node and runs with the node's (and its
//! ServiceAccount's) identity; the Repository URL and the credentials
//! Secret come from a tenant. Without these checks a tenant could make the
//! agent read its own files for them (a GCS `external_account` key names a
//! file or URL to read and a token URL to POST it to; a key *path* names a
//! file of the agent's), borrow its cloud identity (the metadata server,
//! an instance profile, IRSA, the process environment), point it at any
//! host (endpoint overrides), or open any directory of the node as a
//! repository (`local:`). [`Confinement::check`] refuses all of that from
//! the location and credentials alone, before any request is made.
//!
//! The CLI opens with no confinement: there the user gives their own
//! credentials for their own use.

use std::path::{Component, Path, PathBuf};

use super::location::Location;
use super::object_store::Credentials;
use crate::error::{Error, Result};

/// Azure endpoint suffixes of the public and sovereign clouds; any other
/// `AZURE_ENDPOINT_SUFFIX` is an endpoint override.
const AZURE_SUFFIXES: [&str; 3] = [
    "core.windows.net",
    "core.chinacloudapi.cn",
    "core.usgovcloudapi.net",
];

/// The only GCS key type a tenant may give: a service account key, which
/// is signed locally and exchanged at Google's fixed token endpoint. The
/// other types (`external_account`, `authorized_user`,
/// `impersonated_service_account`, ...) make the client read files, fetch
/// URLs or call endpoints named inside the JSON.
const GCS_KEY_TYPE: &str = "service_account";

/// Limits on what a repository may use, set by the cluster admin.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// The process's own (ambient) cloud identity may be used when no keys
    /// are given: the metadata server, instance profile, IRSA / workload
    /// identity, the process environment and its config files.
    pub ambient_identity: bool,
    /// Endpoint overrides (`STASH_GCS_ENDPOINT`, `STORAGE_EMULATOR_HOST`,
    /// `STASH_AZURE_ENDPOINT`, a non-standard `AZURE_ENDPOINT_SUFFIX`)
    /// may come with the credentials.
    pub endpoint_overrides: bool,
    /// Directories `local:` repositories may be in; none: no local
    /// repositories at all.
    pub local_roots: Vec<PathBuf>,
    /// Host patterns (`minio.backup.svc`, `*.amazonaws.com`) endpoints may
    /// name; empty: any host.
    pub egress: Vec<String>,
}

impl Confinement {
    /// Refuses `location` with `creds` unless this confinement allows them.
    /// Makes no request and reads no file outside the local roots.
    pub fn check(&self, location: &Location, creds: &Credentials) -> Result<()> {
        let refuse = |reason: String| Error::Refused {
            op: "open",
            reason: format!("repository {location}: {reason}"),
        };
        match location {
            Location::Local { path } => self.check_local(path).map_err(refuse),
            Location::Rest { url, .. } => self.check_egress(url).map_err(refuse),
            Location::S3 { endpoint, .. } => {
                self.check_egress(endpoint).map_err(refuse)?;
                let keys =
                    creds.aws_access_key_id.is_some() && creds.aws_secret_access_key.is_some();
                if !keys && !self.ambient_identity {
                    return Err(refuse(
                        "no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the credentials Secret; \
                         the agent's own identity (instance profile, IRSA, environment) is not \
                         lent to repositories unless the cluster admin allows it"
                            .into(),
                    ));
                }
                Ok(())
            }
            Location::Gcs { .. } => {
                if creds.google_application_credentials.is_some() {
                    return Err(refuse(
                        "GOOGLE_APPLICATION_CREDENTIALS must hold the service account key \
                         itself (JSON), not a path: the agent does not read files named by a \
                         repository's credentials"
                            .into(),
                    ));
                }
                if creds.gcs_endpoint.is_some() && !self.endpoint_overrides {
                    return Err(refuse(
                        "STASH_GCS_ENDPOINT / STORAGE_EMULATOR_HOST are not allowed in \
                         credentials here (the cluster admin has not allowed endpoint overrides)"
                            .into(),
                    ));
                }
                let endpoint = creds
                    .gcs_endpoint
                    .clone()
                    .unwrap_or_else(|| "https://storage.googleapis.com".into());
                self.check_egress(&endpoint).map_err(refuse)?;
                match &creds.google_credentials_json {
                    Some(json) => check_gcs_key(json).map_err(refuse),
                    // An emulator the admin allowed: no identity at all.
                    None if creds.gcs_endpoint.is_some() => Ok(()),
                    None if self.ambient_identity => Ok(()),
                    None => Err(refuse(
                        "no GOOGLE_APPLICATION_CREDENTIALS (a service account key, as JSON) in \
                         the credentials Secret; the agent's own identity (metadata server, \
                         workload identity) is not lent to repositories unless the cluster \
                         admin allows it"
                            .into(),
                    )),
                }
            }
            Location::Azure { .. } => {
                if creds.azure_endpoint.is_some() && !self.endpoint_overrides {
                    return Err(refuse(
                        "STASH_AZURE_ENDPOINT is not allowed in credentials here (the cluster \
                         admin has not allowed endpoint overrides)"
                            .into(),
                    ));
                }
                if let Some(s) = &creds.azure_endpoint_suffix {
                    if !AZURE_SUFFIXES.contains(&s.as_str()) && !self.endpoint_overrides {
                        return Err(refuse(format!(
                            "AZURE_ENDPOINT_SUFFIX {s:?} is not one of Azure's ({}) and the \
                             cluster admin has not allowed endpoint overrides",
                            AZURE_SUFFIXES.join(", ")
                        )));
                    }
                }
                let account = creds.azure_account_name.as_deref().unwrap_or_default();
                let endpoint = creds.azure_endpoint.clone().unwrap_or_else(|| {
                    format!(
                        "https://{account}.blob.{}",
                        creds
                            .azure_endpoint_suffix
                            .as_deref()
                            .unwrap_or(AZURE_SUFFIXES[0])
                    )
                });
                self.check_egress(&endpoint).map_err(refuse)?;
                if creds.azure_account_key.is_none() && creds.azure_account_sas.is_none() {
                    return Err(refuse(
                        "set AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS in the credentials Secret"
                            .into(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// A local repository: an absolute path without `..`, inside a local
    /// root once symlinks are resolved (the admin's roots may hold links;
    /// what they point to must still be inside).
    fn check_local(&self, path: &Path) -> std::result::Result<(), String> {
        if self.local_roots.is_empty() {
            return Err(
                "local repositories are not allowed here (the cluster admin allows them only \
                 under directories named with --allow-local-repository)"
                    .into(),
            );
        }
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err("a local repository must be an absolute path without \"..\"".into());
        }
        let inside = |p: &Path| {
            self.local_roots.iter().any(|root| {
                let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                p.starts_with(&root) && p != root
            })
        };
        // Resolve what exists of it: a missing repository (init) is judged
        // by its nearest existing ancestor.
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        let resolved = loop {
            match std::fs::canonicalize(&existing) {
                Ok(p) => break rest.iter().rev().fold(p, |p: PathBuf, c| p.join(c)),
                Err(_) => match (existing.file_name(), existing.parent()) {
                    (Some(name), Some(parent)) => {
                        rest.push(name.to_owned());
                        existing = parent.to_path_buf();
                    }
                    _ => break path.to_path_buf(),
                },
            }
        };
        if inside(&resolved) {
            Ok(())
        } else {
            Err(format!(
                "{} is not inside a directory allowed for local repositories",
                resolved.display()
            ))
        }
    }

    /// The endpoint's host matches an egress pattern (any, when none).
    fn check_egress(&self, url: &str) -> std::result::Result<(), String> {
        if self.egress.is_empty() {
            return Ok(());
        }
        let host = url_host(url);
        if self.egress.iter().any(|p| host_matches(p, &host)) {
            Ok(())
        } else {
            Err(format!(
                "host {host:?} is not in the allowed egress hosts ({})",
                self.egress.join(", ")
            ))
        }
    }
}

/// The host of `scheme://[user@]host[:port]/...` (or of `host[:port]`),
/// lower-cased, without brackets.
fn url_host(url: &str) -> String {
    let after = url.split_once("://").map_or(url, |(_, a)| a);
    let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

/// `*.example.com` matches any name below example.com (not example.com
/// itself); anything else matches exactly.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|h| h.ends_with('.') && h.len() > 1),
        None => pattern == host,
    }
}

/// A GCS key as a tenant may give it: JSON of type `service_account`.
fn check_gcs_key(json: &str) -> std::result::Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("GOOGLE_APPLICATION_CREDENTIALS is not valid JSON: {e}"))?;
    let tpe = v.get("type").and_then(|t| t.as_str()).unwrap_or("(none)");
    if tpe != GCS_KEY_TYPE {
        return Err(format!(
            "GOOGLE_APPLICATION_CREDENTIALS has type {tpe:?}: only a {GCS_KEY_TYPE:?} key is \
             accepted (other types make the client read files or call URLs named in the key)"
        ));
    }
    for field in ["client_email", "private_key"] {
        if v.get(field).and_then(|f| f.as_str()).is_none() {
            return Err(format!(
                "GOOGLE_APPLICATION_CREDENTIALS: the service account key has no {field:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_patterns() {
        assert_eq!(url_host("https://u:p@Minio.x:9000/b"), "minio.x");
        assert_eq!(url_host("http://[::1]:80/"), "::1");
        assert_eq!(url_host("127.0.0.1:4443"), "127.0.0.1");
        assert!(host_matches(
            "*.amazonaws.com",
            "s3.eu-west-1.amazonaws.com"
        ));
        assert!(!host_matches("*.amazonaws.com", "amazonaws.com"));
        assert!(!host_matches("*.amazonaws.com", "evilamazonaws.com"));
        assert!(host_matches("minio.backup.svc", "minio.backup.svc"));
        assert!(!host_matches("minio.backup.svc", "minio.backup.svc.evil"));
    }

    #[test]
    fn local_repositories_only_inside_the_roots() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repos");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("link")).unwrap();
        let c = Confinement {
            local_roots: vec![root.clone()],
            ..Confinement::default()
        };
        let creds = Credentials::default();
        let local = |p: PathBuf| Location::Local { path: p };
        c.check(&local(root.join("team-a")), &creds).unwrap();
        c.check(&local(root.join("team-a/new/deeper")), &creds)
            .unwrap();
        for bad in [
            root.clone(),
            root.join("../elsewhere"),
            root.join("link/x"),
            d.path().join("elsewhere"),
            PathBuf::from("relative"),
        ] {
            let e = c
                .check(&local(bad.clone()), &creds)
                .unwrap_err()
                .to_string();
            assert!(e.contains("refused"), "{bad:?}: {e}");
        }
        let e = Confinement::default()
            .check(&local(root.join("x")), &creds)
            .unwrap_err()
            .to_string();
        assert!(e.contains("local repositories are not allowed"), "{e}");
    }

    #[test]
    fn egress_allow_list() {
        let c = Confinement {
            egress: vec!["*.minio.svc".into()],
            ambient_identity: true,
            ..Confinement::default()
        };
        let creds = Credentials::default();
        c.check(
            &Location::parse("s3:http://a.minio.svc:9000/b").unwrap(),
            &creds,
        )
        .unwrap();
        let e = c
            .check(
                &Location::parse("s3:http://169.254.169.254/b").unwrap(),
                &creds,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the allowed egress hosts"), "{e}");
        let e = c
            .check(
                &Location::parse("rest:http://u:pw@10.0.0.1:8000/").unwrap(),
                &creds,
            )
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw"), "{e}");
    }
}
