//! Opening the repository a Repository object describes, with the password
//! and backend credentials from the Secrets it names (in its own namespace).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, Client, ResourceExt};
use repo_format::backend::object_store::Credentials;
use repo_format::backend::{Location, OpenOptions};
use repo_format::Repository as Repo;
use stash_api::policy::repository_admits;
use stash_api::{Repository, RepositoryReference};

/// What opening a repository needs, fetched from the API.
pub struct RepoAccess {
    /// `namespace/name` of the Repository object, for messages and metrics.
    pub name: String,
    /// The backend location.
    pub location: Location,
    /// The password.
    password: Vec<u8>,
    /// Backend credentials.
    credentials: Credentials,
    /// A service account key written to a private file, kept while needed.
    _key_file: Option<tempfile::NamedTempFile>,
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoAccess")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Fetches the Repository `reference` names for a user in `user_ns`,
/// checks its usage policy admits that namespace, and reads its Secrets.
pub async fn fetch(
    client: &Client,
    user_ns: &str,
    user: &str,
    reference: &RepositoryReference,
) -> Result<RepoAccess> {
    let repo_ns = reference.namespace.as_deref().unwrap_or(user_ns);
    let name = format!("{repo_ns}/{}", reference.name);
    let repos: Api<Repository> = Api::namespaced(client.clone(), repo_ns);
    let repo = repos
        .get_opt(&reference.name)
        .await
        .with_context(|| format!("reading Repository {name}"))?
        .ok_or_else(|| anyhow!("Repository {name} does not exist"))?;
    // The controller checked this already; the agent checks again, as it is
    // the one that reads Secrets and data.
    if repo_ns != user_ns {
        let labels = Api::<Namespace>::all(client.clone())
            .get_opt(user_ns)
            .await
            .with_context(|| format!("reading namespace {user_ns}"))?
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        repository_admits(&repo, user_ns, &labels, user).map_err(|r| anyhow!(r.message))?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), repo_ns);
    let pw_ref = &repo.spec.password_secret;
    let pw_secret = secrets
        .get_opt(&pw_ref.name)
        .await
        .with_context(|| format!("reading Secret {repo_ns}/{}", pw_ref.name))?
        .ok_or_else(|| {
            anyhow!(
                "the password Secret {repo_ns}/{} of Repository {name} does not exist",
                pw_ref.name
            )
        })?;
    let password = secret_data(&pw_secret).remove(&pw_ref.key).ok_or_else(|| {
        anyhow!(
            "Secret {repo_ns}/{} has no key {:?} (the password of Repository {name})",
            pw_ref.name,
            pw_ref.key
        )
    })?;
    let password = password.trim_ascii().to_vec();
    if password.is_empty() {
        bail!("the password of Repository {name} is empty");
    }
    let mut env: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(c) = &repo.spec.credentials_secret {
        let s = secrets
            .get_opt(c)
            .await
            .with_context(|| format!("reading Secret {repo_ns}/{c}"))?
            .ok_or_else(|| {
                anyhow!("the credentials Secret {repo_ns}/{c} of Repository {name} does not exist")
            })?;
        env = secret_data(&s);
    }
    let (credentials, key_file) = credentials(env)?;
    let location =
        Location::parse(&repo.spec.url).with_context(|| format!("the url of Repository {name}"))?;
    Ok(RepoAccess {
        name,
        location,
        password,
        credentials,
        _key_file: key_file,
    })
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Backend credentials from a Secret's keys, named like restic's
/// environment variables. A `GOOGLE_APPLICATION_CREDENTIALS` holding the
/// key itself (JSON) rather than a path is written to a private file.
fn credentials(
    env: BTreeMap<String, Vec<u8>>,
) -> Result<(Credentials, Option<tempfile::NamedTempFile>)> {
    let mut env: BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| {
            String::from_utf8(v)
                .map(|v| (k.clone(), v.trim().to_owned()))
                .map_err(|_| anyhow!("credentials key {k} is not UTF-8"))
        })
        .collect::<Result<_>>()?;
    let mut key_file = None;
    if let Some(v) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
        if v.starts_with('{') {
            let mut f = tempfile::Builder::new()
                .prefix("stash-gcs-key")
                .tempfile()
                .context("writing the GCS service account key")?;
            f.write_all(v.as_bytes())?;
            let path = f.path().to_string_lossy().into_owned();
            env.insert("GOOGLE_APPLICATION_CREDENTIALS".into(), path);
            key_file = Some(f);
        }
    }
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    Ok((Credentials::from_env(get), key_file))
}

impl RepoAccess {
    /// Opens the repository (blocking: derives the key).
    pub fn open(&self) -> Result<Arc<Repo>> {
        let opts = OpenOptions {
            credentials: self.credentials.clone(),
            ..OpenOptions::default()
        };
        let backend = repo_format::backend::open(&self.location, &opts)
            .with_context(|| format!("opening the backend of Repository {}", self.name))?;
        let repo = Repo::open(backend, &self.password)
            .with_context(|| format!("opening Repository {}", self.name))?;
        Ok(Arc::new(repo))
    }
}
