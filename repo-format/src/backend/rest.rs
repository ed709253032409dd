//! restic's REST server protocol (`doc/REST_backend.rst` in restic), as
//! spoken by restic's rest-server:
//!
//! | request | meaning |
//! |---|---|
//! | `POST /?create=true` | create the repository |
//! | `HEAD`/`GET`/`POST`/`DELETE /config` | the config file |
//! | `GET /{type}/` | list; with `Accept: application/vnd.x.restic.rest.v2` the answer is `[{"name","size"}]`, else (API v1) `["name"]` |
//! | `HEAD`/`GET`/`POST`/`DELETE /{type}/{name}` | one file; `GET` takes `Range: bytes=a-b` |
//!
//! Types are `data`, `keys`, `locks`, `snapshots`, `index`; the server
//! decides where files go (rest-server puts `data/` in 256 subdirectories).
//! A `POST` goes to a temporary file that the server renames when the whole
//! body arrived and hashed to the file's name, so a broken upload leaves
//! nothing under the final name. Writing a file that exists is refused (403);
//! for content-addressed files that is success, see [`RestBackend::write`].

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};

use super::http::{Http, RequestError, RequestErrorKind, TlsOptions};
use super::{Backend, FileInfo, FileType};
use crate::error::{Error, Result};

const API_V1: &str = "application/vnd.x.restic.rest.v1";
const API_V2: &str = "application/vnd.x.restic.rest.v2";

/// A repository on a restic REST server.
#[derive(Debug, Clone)]
pub struct RestBackend {
    /// The repository URL, ending in `/`, without credentials.
    url: String,
    /// Basic-auth credentials.
    auth: Option<(String, Option<String>)>,
    /// Client and runtime.
    http: Http,
    /// Ask for API v2 listings (names and sizes); off only to test v1.
    api_v2: bool,
}

/// `{"name","size"}` of an API v2 listing.
#[derive(serde::Deserialize)]
struct V2Entry {
    name: String,
    size: u64,
}

impl RestBackend {
    /// A backend for the repository at `url` (ending in `/`), with basic-auth
    /// `user` and `password` when given.
    pub fn new(
        url: &str,
        user: Option<String>,
        password: Option<String>,
        tls: &TlsOptions,
        connections: usize,
    ) -> Result<RestBackend> {
        let mut url = url.to_string();
        if !url.ends_with('/') {
            url.push('/');
        }
        Ok(RestBackend {
            url,
            auth: user.map(|u| (u, password)),
            http: Http::new(tls, connections)?,
            api_v2: true,
        })
    }

    /// The same, speaking API v1 only (listings of names, sizes by `HEAD`),
    /// as restic does with servers that predate v2.
    pub fn with_api_v1(self) -> RestBackend {
        RestBackend {
            api_v2: false,
            ..self
        }
    }

    fn file_url(&self, tpe: FileType, name: &str) -> String {
        match tpe {
            FileType::Config => format!("{}config", self.url),
            t => format!("{}{}/{name}", self.url, t.dirname()),
        }
    }

    /// Sends a request and reads the whole answer, whatever its status.
    fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(reqwest::header::HeaderName, &str)],
        body: Option<Vec<u8>>,
    ) -> std::result::Result<Reply, RequestError> {
        let mut req = self.http.client.request(method.clone(), url);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, p.as_ref());
        }
        for (h, v) in headers {
            req = req.header(h, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        self.http.rt.block_on(async move {
            let resp = req.send().await.map_err(|e| RequestError::client(&e))?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            // Not `resp.content_length()`: for HEAD that is the (empty)
            // body's length, not the file's.
            let length = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = if method == Method::HEAD {
                Vec::new()
            } else {
                resp.bytes()
                    .await
                    .map_err(|e| RequestError::client(&e))?
                    .to_vec()
            };
            Ok(Reply {
                status,
                content_type,
                length,
                body,
            })
        })
    }

    /// The error for an unexpected status, with what the server said.
    fn status_error(&self, reply: &Reply, op: &'static str, url: &str) -> Error {
        let said = String::from_utf8_lossy(&reply.body);
        let said = said.trim();
        let hint = match reply.status {
            StatusCode::UNAUTHORIZED => {
                ": the server wants credentials (rest:http://user:password@host:port/)"
            }
            StatusCode::FORBIDDEN => ": the server refused (wrong user, or append-only mode?)",
            _ => "",
        };
        let what = if said.is_empty() {
            reply
                .status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_string()
        } else {
            said.chars().take(200).collect()
        };
        RequestError::status(reply.status.as_u16(), format!("{what}{hint}"))
            .into_error(op, self.redacted(url))
    }

    /// `url` as it appears in messages (never with credentials: they are
    /// not in `self.url`).
    fn redacted(&self, url: &str) -> String {
        format!("rest:{url}")
    }

    fn request(
        &self,
        op: &'static str,
        method: Method,
        url: &str,
        headers: &[(reqwest::header::HeaderName, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        self.send(method, url, headers, body)
            .map_err(|e| e.into_error(op, self.redacted(url)))
    }

    fn size_of(&self, tpe: FileType, name: &str) -> Result<Option<u64>> {
        let url = self.file_url(tpe, name);
        let reply = self.request("stat", Method::HEAD, &url, &[], None)?;
        match reply.status {
            s if s.is_success() => Ok(Some(reply.length.unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&reply, "stat", &url)),
        }
    }
}

/// A response, read completely.
struct Reply {
    status: StatusCode,
    content_type: String,
    length: Option<u64>,
    body: Vec<u8>,
}

impl Backend for RestBackend {
    fn location(&self) -> String {
        format!("rest:{}", self.url)
    }

    fn create(&self) -> Result<()> {
        let url = format!("{}?create=true", self.url);
        let reply = self.request("create repository", Method::POST, &url, &[], None)?;
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, "create repository", &self.url));
        }
        Ok(())
    }

    fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>> {
        let url = format!("{}{}/", self.url, tpe.dirname());
        let accept = if self.api_v2 { API_V2 } else { API_V1 };
        let reply = self.request("list", Method::GET, &url, &[(ACCEPT, accept)], None)?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, "list", &url));
        }
        let bad_json = |e: serde_json::Error| {
            RequestError::new(
                RequestErrorKind::Permanent,
                format!("the listing is not the JSON the REST protocol prescribes: {e}"),
            )
            .into_error("list", self.redacted(&url))
        };
        let mut out = if reply.content_type.starts_with(API_V2) {
            let entries: Vec<V2Entry> = serde_json::from_slice(&reply.body).map_err(bad_json)?;
            entries
                .into_iter()
                .map(|e| FileInfo {
                    name: e.name,
                    size: e.size,
                })
                .collect()
        } else {
            // API v1: names only; the sizes take one HEAD each.
            let names: Vec<String> = serde_json::from_slice(&reply.body).map_err(bad_json)?;
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                // A file deleted between the listing and the HEAD is gone.
                if let Some(size) = self.size_of(tpe, &name)? {
                    out.push(FileInfo { name, size });
                }
            }
            out
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, tpe: FileType, name: &str) -> Result<Vec<u8>> {
        let url = self.file_url(tpe, name);
        let reply = self.request("read", Method::GET, &url, &[], None)?;
        match reply.status {
            s if s.is_success() => Ok(reply.body),
            StatusCode::NOT_FOUND => Err(Error::NotFound {
                location: self.redacted(&url),
            }),
            _ => Err(self.status_error(&reply, "read", &url)),
        }
    }

    fn read_range(&self, tpe: FileType, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let url = self.file_url(tpe, name);
        let range = format!("bytes={offset}-{}", offset + u64::from(length) - 1);
        let reply = self.request("read", Method::GET, &url, &[(RANGE, &range)], None)?;
        let mut body = match reply.status {
            StatusCode::PARTIAL_CONTENT => reply.body,
            // A server that ignores Range sends everything.
            StatusCode::OK => reply
                .body
                .get(offset as usize..)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound {
                    location: self.redacted(&url),
                })
            }
            StatusCode::RANGE_NOT_SATISFIABLE => Vec::new(),
            _ => return Err(self.status_error(&reply, "read", &url)),
        };
        if body.len() < length as usize {
            return Err(RequestError::new(
                RequestErrorKind::Permanent,
                format!(
                    "bytes {offset}..{}: got only {} bytes: the file is shorter (truncated?)",
                    offset + u64::from(length),
                    body.len()
                ),
            )
            .into_error("read", self.redacted(&url)));
        }
        body.truncate(length as usize);
        Ok(body)
    }

    /// rest-server refuses (403) to write a file that exists. Files other
    /// than `config` are named by the hash of their content (and
    /// rest-server checks that), so an existing file of the same size is the
    /// one we are writing, typically stored by an earlier attempt whose
    /// answer was lost: that is success.
    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> Result<()> {
        let url = self.file_url(tpe, name);
        let reply = self.request("write", Method::POST, &url, &[], Some(data.to_vec()))?;
        if reply.status.is_success() {
            return Ok(());
        }
        if reply.status == StatusCode::FORBIDDEN
            && tpe != FileType::Config
            && self.size_of(tpe, name)? == Some(data.len() as u64)
        {
            tracing::debug!(%url, "already stored");
            return Ok(());
        }
        Err(self.status_error(&reply, "write", &url))
    }

    fn remove(&self, tpe: FileType, name: &str) -> Result<()> {
        let url = self.file_url(tpe, name);
        let reply = self.request("remove", Method::DELETE, &url, &[], None)?;
        match reply.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::NotFound {
                location: self.redacted(&url),
            }),
            _ => Err(self.status_error(&reply, "remove", &url)),
        }
    }

    fn exists(&self, tpe: FileType, name: &str) -> Result<bool> {
        Ok(self.size_of(tpe, name)?.is_some())
    }

    fn connections(&self) -> usize {
        super::DEFAULT_CONNECTIONS
    }
}
