//! Opening the repository a Repository object describes, with the password
//! and backend credentials from the Secrets it names (in its own namespace).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, Client, ResourceExt};
use repo_format::backend::location::redact;
use repo_format::backend::object_store::Credentials;
use repo_format::backend::{Confinement, Location, OpenOptions};
use repo_format::Repository as Repo;
use stash_api::policy::repository_admits;
use stash_api::{Repository, RepositoryReference};

/// What opening a repository needs, fetched from the API.
pub struct RepoAccess {
    /// `namespace/name` of the Repository object, for messages and metrics.
    pub name: String,
    /// The backend location.
    pub location: Location,
    /// When the repository may be pruned.
    pub maintenance: stash_api::Maintenance,
    /// Why nothing may be written to it (`readOnly`, or adopted), if so.
    pub read_only: Option<String>,
    /// The tool that wrote it, for an adopted repository.
    pub adopt: Option<stash_api::adopt::Tool>,
    /// The password.
    password: Vec<u8>,
    /// Backend credentials.
    credentials: Credentials,
    /// What the Repository may use (see [`TenantPolicy`]).
    confinement: Confinement,
}

/// What the cluster admin lets Repositories use, by the Repository's
/// namespace (`*` in a list: every namespace).
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    /// Namespaces whose Repositories may use the agent's own cloud identity.
    pub ambient_identity: Vec<String>,
    /// Namespaces whose credentials Secrets may override endpoints.
    pub endpoint_overrides: Vec<String>,
    /// Directories local repositories may be in.
    pub local_roots: Vec<PathBuf>,
    /// Host patterns endpoints may name (empty: any).
    pub egress: Vec<String>,
}

impl TenantPolicy {
    /// The confinement of a Repository in namespace `ns`.
    pub fn for_namespace(&self, ns: &str) -> Confinement {
        let has = |l: &[String]| l.iter().any(|n| n == "*" || n == ns);
        Confinement {
            ambient_identity: has(&self.ambient_identity),
            endpoint_overrides: has(&self.endpoint_overrides),
            local_roots: self.local_roots.clone(),
            egress: self.egress.clone(),
        }
    }
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoAccess")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where a Repository's Secrets are read.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// From the API (the node agent, which may read every namespace's).
    Api,
    /// From Secret volumes mounted at `<dir>/<secret name>/<key>` (a Job
    /// executor: its ServiceAccount reads no Secret; the kubelet mounted
    /// exactly the Repository's into this pod and no other container).
    Dir(PathBuf),
}

impl SecretSource {
    /// The data of Secret `name` in `ns`, or `None` when there is none.
    async fn get(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        match self {
            SecretSource::Api => {
                let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
                Ok(secrets
                    .get_opt(name)
                    .await
                    .map_err(|e| secret_error(e, ns, name))?
                    .map(|s| secret_data(&s)))
            }
            SecretSource::Dir(dir) => {
                let d = dir.join(name);
                let entries = match std::fs::read_dir(&d) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("reading Secret {ns}/{name} mounted at {}", d.display())
                        })
                    }
                };
                let mut out = BTreeMap::new();
                for e in entries {
                    let e = e.with_context(|| format!("listing {}", d.display()))?;
                    let key = e.file_name().to_string_lossy().into_owned();
                    // The kubelet's own entries (`..data`, the timestamped
                    // directory) are not keys.
                    if key.starts_with("..") {
                        continue;
                    }
                    let v = std::fs::read(e.path())
                        .with_context(|| format!("reading key {key} of Secret {ns}/{name}"))?;
                    out.insert(key, v);
                }
                Ok(Some(out))
            }
        }
    }
}

/// Fetches the Repository `reference` names for a user in `user_ns`,
/// checks its usage policy admits that namespace, and reads its Secrets.
pub async fn fetch(
    client: &Client,
    policy: &TenantPolicy,
    secrets: &SecretSource,
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
    let pw_ref = &repo.spec.password_secret;
    let pw_secret = secrets
        .get(client, repo_ns, &pw_ref.name)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "the password Secret {repo_ns}/{} of Repository {name} does not exist",
                pw_ref.name
            )
        })?;
    let mut pw_secret = pw_secret;
    let password = pw_secret.remove(&pw_ref.key).ok_or_else(|| {
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
        env = secrets.get(client, repo_ns, c).await?.ok_or_else(|| {
            anyhow!("the credentials Secret {repo_ns}/{c} of Repository {name} does not exist")
        })?;
    }
    let credentials = credentials(env)?;
    // The parse error names the URL without its user information.
    let location = Location::parse(&repo.spec.url)
        .with_context(|| format!("the url of Repository {name} ({})", redact(&repo.spec.url)))?;
    let confinement = policy.for_namespace(repo_ns);
    // Refused here, before the password is even used: no request is made
    // for a Repository the admin's policy does not allow.
    confinement
        .check(&location, &credentials)
        .with_context(|| format!("Repository {name}"))?;
    Ok(RepoAccess {
        read_only: repo.spec.refuses_writes(&name),
        name,
        location,
        maintenance: repo.spec.maintenance.clone().unwrap_or_default(),
        adopt: repo.spec.adopt.as_ref().map(|a| a.from.tool()),
        password,
        credentials,
        confinement,
    })
}

/// The error of reading Secret `ns/name` by name (the agent never lists
/// Secrets). A refusal means the controller has not (yet) granted it: the
/// Role `stash-agent-secrets` of the namespace lists only Secrets that
/// Repositories name.
fn secret_error(e: kube::Error, ns: &str, name: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "the agent may not read Secret {ns}/{name}: the controller grants the agents only \
             the Secrets that Repositories name, through the Role stash-agent-secrets of \
             namespace {ns} (is the controller running, and does a Repository name it?): {e}"
        ),
        _ => anyhow::Error::new(e).context(format!("reading Secret {ns}/{name}")),
    }
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
/// environment variables. `GOOGLE_APPLICATION_CREDENTIALS` must hold the
/// key itself (JSON); a path stays a path, which the confinement refuses:
/// the agent never reads a file a tenant names.
fn credentials(env: BTreeMap<String, Vec<u8>>) -> Result<Credentials> {
    let env: BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| {
            String::from_utf8(v)
                .map(|v| (k.clone(), v.trim().to_owned()))
                .map_err(|_| anyhow!("credentials key {k} is not UTF-8"))
        })
        .collect::<Result<_>>()?;
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let mut c = Credentials::from_env(get);
    if c.google_application_credentials
        .as_deref()
        .is_some_and(|v| v.starts_with('{'))
    {
        c.google_credentials_json = c.google_application_credentials.take();
    }
    Ok(c)
}

impl RepoAccess {
    /// Opens the repository (blocking: derives the key).
    pub fn open(&self) -> Result<Arc<Repo>> {
        let opts = OpenOptions {
            credentials: self.credentials.clone(),
            confinement: Some(self.confinement.clone()),
            ..OpenOptions::default()
        };
        let backend = repo_format::backend::open(&self.location, &opts)
            .with_context(|| format!("opening the backend of Repository {}", self.name))?;
        let repo = Repo::open(backend, &self.password)
            .with_context(|| format!("opening Repository {}", self.name))?;
        Ok(Arc::new(repo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A loopback listener that counts (and drops) every connection.
    fn listener() -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                s.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
        (addr, seen)
    }

    fn access(url: &str, env: &[(&str, String)], policy: &TenantPolicy) -> Result<RepoAccess> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
            .collect();
        let credentials = credentials(env)?;
        let location = Location::parse(url)?;
        let confinement = policy.for_namespace("team");
        confinement.check(&location, &credentials)?;
        Ok(RepoAccess {
            name: "team/main".into(),
            location,
            maintenance: Default::default(),
            read_only: None,
            adopt: None,
            password: b"pw".to_vec(),
            credentials,
            confinement,
        })
    }

    /// Issue 12, hole 1: credentials a tenant must not give the agent (GCS
    /// keys that make the client read files or call URLs, a key path, no
    /// keys at all, endpoint overrides) are refused before any request: the
    /// listener they point at sees nothing, whether the check at fetch
    /// time or the one in `open` is what stops them.
    #[test]
    fn tenant_credentials_that_would_make_the_agent_a_deputy_are_refused_before_any_request() {
        let (addr, seen) = listener();
        let url = format!("http://{addr}/");
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            key.path(),
            r#"{"type":"service_account","client_email":"a@b","private_key":"x"}"#,
        )
        .unwrap();
        let gcs =
            |json: serde_json::Value| vec![("GOOGLE_APPLICATION_CREDENTIALS", json.to_string())];
        /// What, the repository, the Secret's keys, the refusal's words.
        type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                "external_account",
                "gs:b:/x".into(),
                gcs(serde_json::json!({
                "type": "external_account", "audience": "a",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": url,
                "credential_source": {"file": "/etc/hostname", "format": {"type": "text"}}})),
                "type \"external_account\"",
            ),
            (
                "authorized_user",
                "gs:b:/x".into(),
                gcs(serde_json::json!({
                "type": "authorized_user", "client_id": "c", "client_secret": "s",
                "refresh_token": "r", "token_uri": url})),
                "type \"authorized_user\"",
            ),
            (
                "impersonation",
                "gs:b:/x".into(),
                gcs(serde_json::json!({
                "type": "impersonated_service_account",
                "service_account_impersonation_url": url,
                "source_credentials": {"type": "authorized_user", "client_id": "c",
                                       "client_secret": "s", "refresh_token": "r"}})),
                "type \"impersonated_service_account\"",
            ),
            (
                "a path",
                "gs:b:/x".into(),
                vec![(
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    key.path().display().to_string(),
                )],
                "not a path",
            ),
            (
                "no GCS keys",
                "gs:b:/x".into(),
                vec![],
                "no GOOGLE_APPLICATION_CREDENTIALS",
            ),
            (
                "GCS endpoint override",
                "gs:b:/x".into(),
                vec![("STASH_GCS_ENDPOINT", url.clone())],
                "STASH_GCS_ENDPOINT",
            ),
            (
                "emulator host",
                "gs:b:/x".into(),
                vec![("STORAGE_EMULATOR_HOST", addr.clone())],
                "STASH_GCS_ENDPOINT",
            ),
            (
                "no S3 keys",
                format!("s3:http://{addr}/b"),
                vec![],
                "no AWS_ACCESS_KEY_ID",
            ),
            (
                "Azure endpoint override",
                "azure:c:/x".into(),
                vec![
                    ("AZURE_ACCOUNT_NAME", "a".into()),
                    ("AZURE_ACCOUNT_KEY", "a2V5".into()),
                    ("STASH_AZURE_ENDPOINT", url.clone()),
                ],
                "STASH_AZURE_ENDPOINT",
            ),
            (
                "Azure suffix override",
                "azure:c:/x".into(),
                vec![
                    ("AZURE_ACCOUNT_NAME", "a".into()),
                    ("AZURE_ACCOUNT_KEY", "a2V5".into()),
                    ("AZURE_ENDPOINT_SUFFIX", addr.clone()),
                ],
                "AZURE_ENDPOINT_SUFFIX",
            ),
            (
                "a local path",
                "local:/var/lib/kubelet".into(),
                vec![],
                "local repositories are not allowed",
            ),
        ];
        let policy = TenantPolicy::default();
        for (what, repo, env, why) in cases {
            let e = match access(&repo, &env, &policy) {
                Err(e) => format!("{e:#}"),
                // Not refused by the check: try it, as the agent would.
                Ok(a) => match a.open() {
                    Err(e) => format!("{e:#}"),
                    Ok(_) => panic!("{what}: opened"),
                },
            };
            assert!(e.contains(why), "{what}: {e}");
            // Also straight through `open`, as a RepoAccess made any other
            // way would be.
            let env_map = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
                .collect();
            let a = RepoAccess {
                name: "team/main".into(),
                location: Location::parse(&repo).unwrap(),
                maintenance: Default::default(),
                read_only: None,
                adopt: None,
                password: b"pw".to_vec(),
                credentials: credentials(env_map).unwrap(),
                confinement: policy.for_namespace("team"),
            };
            assert!(a.open().is_err(), "{what}");
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(seen.load(Ordering::SeqCst), 0, "{what}: a request was made");
        }
    }

    /// What the admin opts a namespace into, it gets, and only it: the
    /// listener is reached (the test above would see a request).
    #[test]
    fn opted_in_namespaces_get_endpoint_overrides() {
        let (addr, seen) = listener();
        let env = [("STASH_GCS_ENDPOINT", format!("http://{addr}"))];
        let mut policy = TenantPolicy {
            endpoint_overrides: vec!["other".into()],
            ..TenantPolicy::default()
        };
        assert!(access("gs:b:/x", &env, &policy).is_err());
        policy.endpoint_overrides.push("team".into());
        let a = access("gs:b:/x", &env, &policy).unwrap();
        let opts = OpenOptions {
            credentials: a.credentials.clone(),
            confinement: Some(a.confinement.clone()),
            retry: repo_format::backend::retry::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
            ..OpenOptions::default()
        };
        let backend = repo_format::backend::open(&a.location, &opts).unwrap();
        assert!(
            backend.list(repo_format::backend::FileType::Key).is_err(),
            "the listener answers nothing"
        );
        assert!(seen.load(Ordering::SeqCst) > 0);
    }

    #[test]
    fn a_service_account_key_is_accepted_inline() {
        let env = [(
            "GOOGLE_APPLICATION_CREDENTIALS",
            r#"{"type":"service_account","client_email":"a@b","private_key":"k"}"#.to_string(),
        )];
        let a = access("gs:b:/x", &env, &TenantPolicy::default()).unwrap();
        assert!(a.credentials.google_application_credentials.is_none());
        assert!(a.credentials.google_credentials_json.is_some());
    }
}
