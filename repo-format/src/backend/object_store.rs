//! S3, Google Cloud Storage and Azure Blob Storage, through OpenDAL.
//!
//! Objects are laid out as restic lays them out in a bucket: under the
//! prefix, `config`, `keys/<id>`, `locks/<id>`, `snapshots/<id>`,
//! `index/<id>` and `data/<2 hex>/<id>`, so restic and Stash share
//! repositories there.
//!
//! Each object is uploaded in one request (a pack is at most some tens of
//! MiB): the stores make an object visible only when its upload is
//! complete, so a reader never finds half of one under its final name.
//!
//! OpenDAL does not create buckets; [`ObjectStoreBackend::create`] does
//! that itself with one signed request.

use std::fmt;
use std::future::IntoFuture;

use ::opendal::layers::HttpClientLayer;
use ::opendal::raw::HttpClient;
use ::opendal::{services, ErrorKind, Operator};

use super::http::{Http, RequestError, RequestErrorKind, TlsOptions};
use super::location::Location;
use super::{Backend, FileInfo, FileType};
use crate::error::{Error, Result};

/// Keys and endpoints for the object stores, from the environment variables
/// restic reads (see [`Credentials::from_env`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub aws_access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub aws_secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN`.
    pub aws_session_token: Option<String>,
    /// `AWS_DEFAULT_REGION` (or `AWS_REGION`).
    pub aws_region: Option<String>,
    /// `GOOGLE_PROJECT_ID`: the project new buckets belong to.
    pub google_project_id: Option<String>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: a service account key file.
    pub google_application_credentials: Option<String>,
    /// `STASH_GCS_ENDPOINT` (or `STORAGE_EMULATOR_HOST`, the emulators'
    /// convention): instead of `https://storage.googleapis.com`.
    pub gcs_endpoint: Option<String>,
    /// `AZURE_ACCOUNT_NAME`.
    pub azure_account_name: Option<String>,
    /// `AZURE_ACCOUNT_KEY`.
    pub azure_account_key: Option<String>,
    /// `AZURE_ACCOUNT_SAS`: a SAS token instead of the key.
    pub azure_account_sas: Option<String>,
    /// `AZURE_ENDPOINT_SUFFIX`: `core.windows.net` unless set.
    pub azure_endpoint_suffix: Option<String>,
    /// `STASH_AZURE_ENDPOINT`: the whole account URL instead of
    /// `https://<account>.blob.<suffix>`, such as Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub azure_endpoint: Option<String>,
}

/// Secrets are not printed.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("aws_access_key_id", &self.aws_access_key_id)
            .field("aws_secret_access_key", &set(&self.aws_secret_access_key))
            .field("aws_session_token", &set(&self.aws_session_token))
            .field("aws_region", &self.aws_region)
            .field("google_project_id", &self.google_project_id)
            .field(
                "google_application_credentials",
                &self.google_application_credentials,
            )
            .field("gcs_endpoint", &self.gcs_endpoint)
            .field("azure_account_name", &self.azure_account_name)
            .field("azure_account_key", &set(&self.azure_account_key))
            .field("azure_account_sas", &set(&self.azure_account_sas))
            .field("azure_endpoint_suffix", &self.azure_endpoint_suffix)
            .field("azure_endpoint", &self.azure_endpoint)
            .finish()
    }
}

impl Credentials {
    /// Reads the variables through `var` (normally `std::env::var`); empty
    /// values count as unset.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Credentials {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        Credentials {
            aws_access_key_id: get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token: get("AWS_SESSION_TOKEN"),
            aws_region: get("AWS_DEFAULT_REGION").or_else(|| get("AWS_REGION")),
            google_project_id: get("GOOGLE_PROJECT_ID"),
            google_application_credentials: get("GOOGLE_APPLICATION_CREDENTIALS"),
            gcs_endpoint: get("STASH_GCS_ENDPOINT").or_else(|| get("STORAGE_EMULATOR_HOST")),
            azure_account_name: get("AZURE_ACCOUNT_NAME"),
            azure_account_key: get("AZURE_ACCOUNT_KEY"),
            azure_account_sas: get("AZURE_ACCOUNT_SAS"),
            azure_endpoint_suffix: get("AZURE_ENDPOINT_SUFFIX"),
            azure_endpoint: get("STASH_AZURE_ENDPOINT"),
        }
    }
}

/// Which store, with what creating its bucket needs.
#[derive(Debug, Clone)]
enum Store {
    S3 {
        endpoint: String,
        region: String,
        access_key: Option<(String, String, Option<String>)>,
    },
    Gcs {
        endpoint: String,
        project: Option<String>,
        authenticated: bool,
    },
    Azure {
        endpoint: String,
        account: String,
        key: Option<String>,
        sas: Option<String>,
    },
}

impl Store {
    /// What to call the bucket in messages.
    fn bucket_word(&self) -> &'static str {
        match self {
            Store::Azure { .. } => "container",
            _ => "bucket",
        }
    }

    /// What to check when access is denied.
    fn credentials_hint(&self) -> &'static str {
        match self {
            Store::S3 { .. } => "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the bucket policy",
            Store::Gcs { .. } => "check GOOGLE_APPLICATION_CREDENTIALS and the bucket's permissions",
            Store::Azure { .. } => "check AZURE_ACCOUNT_NAME and AZURE_ACCOUNT_KEY (or AZURE_ACCOUNT_SAS)",
        }
    }
}

/// A repository in an S3, GCS or Azure bucket (container).
#[derive(Debug, Clone)]
pub struct ObjectStoreBackend {
    /// OpenDAL, rooted at the prefix.
    op: Operator,
    /// The HTTP client (shared with `op`) and the runtime.
    http: Http,
    /// Which store.
    store: Store,
    /// The bucket or container.
    bucket: String,
    /// Where, for messages: the repository string.
    location: String,
}

impl ObjectStoreBackend {
    /// The backend for an `s3:`, `gs:` or `azure:` location.
    pub fn new(
        location: &Location,
        creds: &Credentials,
        tls: &TlsOptions,
        connections: usize,
    ) -> Result<ObjectStoreBackend> {
        let http = Http::new(tls, connections)?;
        let client = HttpClient::with(http.client.clone());
        let invalid = |what: &str, e: ::opendal::Error| {
            Error::InvalidArgument(format!("repository {location}: {what}: {e}"))
        };
        let (op, store, bucket) = match location {
            Location::S3 {
                endpoint,
                bucket,
                prefix,
            } => {
                // MinIO and most S3-compatible stores ignore the region but
                // sign with it; AWS itself needs the bucket's own region.
                let region = match &creds.aws_region {
                    Some(r) => r.clone(),
                    None if endpoint.contains("amazonaws.com") => http
                        .rt
                        .block_on(services::S3::detect_region(endpoint, bucket))
                        .unwrap_or_else(|| "us-east-1".into()),
                    None => "us-east-1".into(),
                };
                let mut b = services::S3::default()
                    .endpoint(endpoint)
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(&region);
                let access_key = match (&creds.aws_access_key_id, &creds.aws_secret_access_key) {
                    (Some(id), Some(secret)) => {
                        b = b
                            .access_key_id(id)
                            .secret_access_key(secret)
                            // Keys given: do not go looking for others (and
                            // do not wait for an EC2 metadata service).
                            .disable_config_load()
                            .disable_ec2_metadata();
                        if let Some(t) = &creds.aws_session_token {
                            b = b.session_token(t);
                        }
                        Some((id.clone(), secret.clone(), creds.aws_session_token.clone()))
                    }
                    (Some(_), None) | (None, Some(_)) => {
                        return Err(Error::InvalidArgument(format!(
                            "repository {location}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together"
                        )))
                    }
                    // Neither: the default chain (profile, web identity as on
                    // EKS, instance metadata).
                    (None, None) => None,
                };
                let op = Operator::new(b).map_err(|e| invalid("S3 settings", e))?;
                let store = Store::S3 {
                    endpoint: endpoint.clone(),
                    region,
                    access_key,
                };
                (
                    op.layer(HttpClientLayer::new(client)).finish(),
                    store,
                    bucket,
                )
            }
            Location::Gcs { bucket, prefix } => {
                let endpoint = creds
                    .gcs_endpoint
                    .clone()
                    .map(|e| {
                        if e.contains("://") {
                            e
                        } else {
                            format!("http://{e}")
                        }
                    })
                    .unwrap_or_else(|| "https://storage.googleapis.com".into());
                let endpoint = endpoint.trim_end_matches('/').to_string();
                let mut b = services::Gcs::default()
                    .endpoint(&endpoint)
                    .bucket(bucket)
                    .root(&format!("/{prefix}"));
                let authenticated = match &creds.google_application_credentials {
                    Some(path) => {
                        b = b.credential_path(path);
                        true
                    }
                    None if creds.gcs_endpoint.is_some() => {
                        // An emulator: no credentials to find.
                        b = b
                            .skip_signature()
                            .disable_vm_metadata()
                            .disable_config_load();
                        false
                    }
                    // The default chain (metadata server on GCE and GKE).
                    None => true,
                };
                let op = Operator::new(b).map_err(|e| invalid("GCS settings", e))?;
                let store = Store::Gcs {
                    endpoint,
                    project: creds.google_project_id.clone(),
                    authenticated,
                };
                (
                    op.layer(HttpClientLayer::new(client)).finish(),
                    store,
                    bucket,
                )
            }
            Location::Azure { container, prefix } => {
                let account = creds.azure_account_name.clone().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "repository {location}: AZURE_ACCOUNT_NAME is not set"
                    ))
                })?;
                let endpoint = match &creds.azure_endpoint {
                    Some(e) => e.trim_end_matches('/').to_string(),
                    None => format!(
                        "https://{account}.blob.{}",
                        creds
                            .azure_endpoint_suffix
                            .as_deref()
                            .unwrap_or("core.windows.net")
                    ),
                };
                let mut b = services::Azblob::default()
                    .endpoint(&endpoint)
                    .container(container)
                    .account_name(&account)
                    .root(&format!("/{prefix}"));
                match (&creds.azure_account_key, &creds.azure_account_sas) {
                    (Some(k), _) => b = b.account_key(k),
                    (None, Some(sas)) => b = b.sas_token(sas),
                    (None, None) => {
                        return Err(Error::InvalidArgument(format!(
                            "repository {location}: set AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS"
                        )))
                    }
                }
                let op = Operator::new(b).map_err(|e| invalid("Azure settings", e))?;
                let store = Store::Azure {
                    endpoint,
                    account,
                    key: creds.azure_account_key.clone(),
                    sas: creds.azure_account_sas.clone(),
                };
                (
                    op.layer(HttpClientLayer::new(client)).finish(),
                    store,
                    container,
                )
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{other} is not an object store location"
                )))
            }
        };
        Ok(ObjectStoreBackend {
            op,
            http,
            store,
            bucket: bucket.clone(),
            location: location.to_string(),
        })
    }

    /// The object's name under the prefix.
    fn path(tpe: FileType, name: &str) -> String {
        match tpe {
            FileType::Config => "config".into(),
            FileType::Pack => format!("data/{}/{name}", name.get(..2).unwrap_or(name)),
            t => format!("{}/{name}", t.dirname()),
        }
    }

    /// The object as it appears in messages.
    fn object(&self, path: &str) -> String {
        format!("{}/{path}", self.location.trim_end_matches('/'))
    }

    /// OpenDAL's error, classified and named. A missing object is
    /// [`Error::NotFound`]; a missing bucket is a permanent error that says
    /// so, as is a refusal, with what to check.
    fn error(&self, op: &'static str, path: &str, e: ::opendal::Error) -> Error {
        let object = self.object(path);
        let msg = e.message().to_string();
        let word = self.store.bucket_word();
        let (kind, message) = match e.kind() {
            // OpenDAL reports S3's NoSuchBucket as a configuration error,
            // the others as not found: the words decide.
            _ if is_missing_bucket(&msg) => return self.missing_bucket(op, path),
            ErrorKind::NotFound => return Error::NotFound { location: object },
            ErrorKind::PermissionDenied => (
                RequestErrorKind::Permanent,
                format!(
                    "access denied to {word} {:?}: {}: {}",
                    self.bucket,
                    self.store.credentials_hint(),
                    short(&msg)
                ),
            ),
            ErrorKind::RateLimited => (RequestErrorKind::Transient, short(&msg)),
            _ if is_connect_error(&e) => (RequestErrorKind::Connect, chain(&e)),
            _ if e.is_temporary() => (RequestErrorKind::Transient, chain(&e)),
            _ => (RequestErrorKind::Permanent, chain(&e)),
        };
        RequestError::new(kind, message).into_error(op, object)
    }

    /// The error for a bucket (container) that is not there.
    fn missing_bucket(&self, op: &'static str, path: &str) -> Error {
        RequestError::new(
            RequestErrorKind::Permanent,
            format!(
                "{} {:?} does not exist (`stash init` creates it)",
                self.store.bucket_word(),
                self.bucket
            ),
        )
        .into_error(op, self.object(path))
    }

    /// Whether the bucket exists: a listing tells a missing bucket from an
    /// empty one (a HEAD of an object does not).
    fn bucket_exists(&self) -> Result<bool> {
        let r = self
            .http
            .rt
            .block_on(self.op.list_with("keys/").limit(1).into_future());
        match r {
            Ok(_) => Ok(true),
            // Listing a prefix never finds "nothing there" in a bucket that
            // exists; fake-gcs-server says only "Not Found" for a missing one.
            Err(e) if e.kind() == ErrorKind::NotFound || is_missing_bucket(e.message()) => {
                Ok(false)
            }
            Err(e) => Err(self.error("list", "keys/", e)),
        }
    }

    /// Creates the bucket (container) with one signed request.
    fn create_bucket(&self) -> Result<()> {
        let (method, url, body, content_type) = match &self.store {
            Store::S3 {
                endpoint, region, ..
            } => {
                let body = if region == "us-east-1" {
                    Vec::new()
                } else {
                    format!(
                        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                         <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
                    )
                    .into_bytes()
                };
                (
                    http::Method::PUT,
                    format!("{}/{}", endpoint.trim_end_matches('/'), self.bucket),
                    body,
                    None,
                )
            }
            Store::Gcs {
                endpoint, project, ..
            } => {
                let project = project.clone().unwrap_or_default();
                (
                    http::Method::POST,
                    format!("{endpoint}/storage/v1/b?project={project}"),
                    serde_json::json!({ "name": self.bucket })
                        .to_string()
                        .into_bytes(),
                    Some("application/json"),
                )
            }
            Store::Azure { endpoint, .. } => (
                http::Method::PUT,
                format!("{endpoint}/{}?restype=container", self.bucket),
                Vec::new(),
                None,
            ),
        };
        let mut parts = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(())
            .map_err(|e| Error::InvalidArgument(format!("create {url}: {e}")))?
            .into_parts()
            .0;
        if let Some(ct) = content_type {
            parts.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ct),
            );
        }
        let object = self.location.clone();
        let word = self.store.bucket_word();
        let fail = |kind, message: String| {
            RequestError::new(kind, message).into_error("create", object.clone())
        };
        self.http.rt.block_on(self.sign(&mut parts)).map_err(|e| {
            fail(
                RequestErrorKind::Permanent,
                format!(
                    "signing the request to create {word} {:?}: {e}",
                    self.bucket
                ),
            )
        })?;
        let mut req = self.http.client.request(method, parts.uri.to_string());
        for (k, v) in &parts.headers {
            req = req.header(k, v);
        }
        let (status, text) = self
            .http
            .rt
            .block_on(async move {
                let resp = req.body(body).send().await?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                Ok::<_, reqwest::Error>((status, text))
            })
            .map_err(|e| {
                let r = RequestError::client(&e);
                fail(r.kind, r.message)
            })?;
        // 409: it exists (perhaps made just now by another process). Ours
        // or not, the listing in `create` will tell.
        if status.is_success() || status.as_u16() == 409 {
            tracing::info!(location = %self.location, "created {word} {}", self.bucket);
            return Ok(());
        }
        let hint = if status.as_u16() == 403 {
            format!(": {}", self.store.credentials_hint())
        } else {
            String::new()
        };
        Err(fail(
            if status.is_server_error() {
                RequestErrorKind::Transient
            } else {
                RequestErrorKind::Permanent
            },
            format!(
                "creating {word} {:?}: HTTP {}{hint}: {}",
                self.bucket,
                status.as_u16(),
                short(&text)
            ),
        ))
    }

    /// Signs `parts` as the store wants.
    async fn sign(&self, parts: &mut http::request::Parts) -> std::result::Result<(), String> {
        match &self.store {
            Store::S3 {
                region, access_key, ..
            } => {
                let Some((id, secret, token)) = access_key else {
                    return Err("creating a bucket needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; create it by other means".into());
                };
                let provider = match token {
                    Some(t) => reqsign_aws_v4::StaticCredentialProvider::new(id, secret)
                        .with_session_token(t),
                    None => reqsign_aws_v4::StaticCredentialProvider::new(id, secret),
                };
                let signer = reqsign_core::Signer::new(
                    reqsign_core::Context::new(),
                    provider,
                    reqsign_aws_v4::RequestSigner::new("s3", region),
                );
                signer.sign(parts, None).await.map_err(|e| e.to_string())
            }
            Store::Gcs { authenticated, .. } => {
                if *authenticated {
                    Err("creating a bucket in Google Cloud Storage is not done by stash; create it with `gcloud storage buckets create`".into())
                } else {
                    Ok(())
                }
            }
            Store::Azure {
                account, key, sas, ..
            } => {
                let provider = match (key, sas) {
                    (Some(k), _) => {
                        reqsign_azure_storage::StaticCredentialProvider::new_shared_key(account, k)
                    }
                    (None, Some(s)) => {
                        reqsign_azure_storage::StaticCredentialProvider::new_sas_token(s)
                    }
                    (None, None) => return Err("no Azure credentials".into()),
                };
                parts
                    .headers
                    .insert("x-ms-version", http::HeaderValue::from_static("2021-08-06"));
                let signer = reqsign_core::Signer::new(
                    reqsign_core::Context::new(),
                    provider,
                    reqsign_azure_storage::RequestSigner::new(),
                );
                signer.sign(parts, None).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// The services' ways of saying "no such bucket / container" (S3 and
/// MinIO, Azure and Azurite, GCS and fake-gcs-server).
fn is_missing_bucket(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    [
        "nosuchbucket",
        "containernotfound",
        "bucket does not exist",
        "container does not exist",
        "bucket not found",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// Whether the connection could not be made at all (refused, no such host).
fn is_connect_error(e: &::opendal::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            return r.is_connect();
        }
        src = s.source();
    }
    false
}

/// The error with its sources, on one line.
fn chain(e: &::opendal::Error) -> String {
    let mut out = format!("{}: {}", e.kind(), e.message());
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    short(&out)
}

/// At most 300 characters of a server's answer, on one line.
fn short(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        one_line.chars().take(300).collect::<String>() + "..."
    } else {
        one_line
    }
}

impl Backend for ObjectStoreBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    /// Creates the bucket (container) when it does not exist. Objects need
    /// no directories.
    fn create(&self) -> Result<()> {
        if !self.bucket_exists()? {
            self.create_bucket()?;
            if !self.bucket_exists()? {
                return Err(RequestError::new(
                    RequestErrorKind::Permanent,
                    format!(
                        "{} {:?} still does not exist after creating it",
                        self.store.bucket_word(),
                        self.bucket
                    ),
                )
                .into_error("create", self.location.clone()));
            }
        }
        Ok(())
    }

    fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>> {
        let dir = format!("{}/", tpe.dirname());
        let entries = self
            .http
            .rt
            .block_on(self.op.list_with(&dir).recursive(true).into_future())
            .map_err(|e| {
                // A listing finds nothing only where there is no bucket.
                if e.kind() == ErrorKind::NotFound {
                    self.missing_bucket("list", &dir)
                } else {
                    self.error("list", &dir, e)
                }
            })?;
        let mut out: Vec<FileInfo> = entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| FileInfo {
                name: e.name().to_string(),
                size: e.metadata().content_length(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, tpe: FileType, name: &str) -> Result<Vec<u8>> {
        let path = Self::path(tpe, name);
        self.http
            .rt
            .block_on(self.op.read(&path))
            .map(|b| b.to_vec())
            .map_err(|e| self.error("read", &path, e))
    }

    fn read_range(&self, tpe: FileType, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let path = Self::path(tpe, name);
        let end = offset + u64::from(length);
        let buf = self
            .http
            .rt
            .block_on(self.op.read_with(&path).range(offset..end).into_future())
            .map_err(|e| self.error("read", &path, e))?;
        if buf.len() != length as usize {
            return Err(RequestError::new(
                RequestErrorKind::Permanent,
                format!(
                    "bytes {offset}..{end}: got {} bytes: the object is shorter (truncated?)",
                    buf.len()
                ),
            )
            .into_error("read", self.object(&path)));
        }
        Ok(buf.to_vec())
    }

    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> Result<()> {
        let path = Self::path(tpe, name);
        self.http
            .rt
            .block_on(self.op.write(&path, data.to_vec()))
            .map(|_| ())
            .map_err(|e| self.error("write", &path, e))
    }

    fn remove(&self, tpe: FileType, name: &str) -> Result<()> {
        let path = Self::path(tpe, name);
        self.http
            .rt
            .block_on(self.op.delete(&path))
            .map_err(|e| self.error("remove", &path, e))
    }

    /// A file in a bucket that does not exist does not exist either (and
    /// `init` asks before it creates the bucket).
    fn exists(&self, tpe: FileType, name: &str) -> Result<bool> {
        let path = Self::path(tpe, name);
        match self.http.rt.block_on(self.op.stat(&path)) {
            Ok(_) => Ok(true),
            Err(e) if is_missing_bucket(e.message()) => Ok(false),
            Err(e) => match self.error("stat", &path, e) {
                Error::NotFound { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    fn connections(&self) -> usize {
        super::DEFAULT_CONNECTIONS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_restics_variables() {
        let env = |k: &str| -> Option<String> {
            match k {
                "AWS_ACCESS_KEY_ID" => Some("AKID".into()),
                "AWS_SECRET_ACCESS_KEY" => Some("hunter2".into()),
                "AWS_REGION" => Some("eu-west-1".into()),
                "STORAGE_EMULATOR_HOST" => Some("127.0.0.1:4443".into()),
                "AZURE_ACCOUNT_NAME" => Some("acct".into()),
                "AZURE_ACCOUNT_SAS" => Some("".into()),
                _ => None,
            }
        };
        let c = Credentials::from_env(env);
        assert_eq!(c.aws_access_key_id.as_deref(), Some("AKID"));
        assert_eq!(c.aws_region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.gcs_endpoint.as_deref(), Some("127.0.0.1:4443"));
        assert_eq!(c.azure_account_name.as_deref(), Some("acct"));
        assert_eq!(c.azure_account_sas, None, "empty counts as unset");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn objects_are_laid_out_as_restic_does() {
        let id = "ab".to_string() + &"0".repeat(62);
        assert_eq!(
            ObjectStoreBackend::path(FileType::Config, "config"),
            "config"
        );
        assert_eq!(
            ObjectStoreBackend::path(FileType::Pack, &id),
            format!("data/ab/{id}")
        );
        assert_eq!(
            ObjectStoreBackend::path(FileType::Snapshot, &id),
            format!("snapshots/{id}")
        );
    }

    #[test]
    fn incomplete_settings_are_refused_before_any_request() {
        let tls = TlsOptions::default();
        let s3 = Location::parse("s3:http://127.0.0.1:1/b").unwrap();
        let half = Credentials {
            aws_access_key_id: Some("id".into()),
            ..Credentials::default()
        };
        let e = ObjectStoreBackend::new(&s3, &half, &tls, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let az = Location::parse("azure:c:/").unwrap();
        let e = ObjectStoreBackend::new(&az, &Credentials::default(), &tls, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AZURE_ACCOUNT_NAME"), "{e}");
    }
}
