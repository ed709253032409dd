//! What the HTTP-based backends share: one HTTP client (with the user's CA
//! certificates or, when asked, no certificate checks), the tokio runtime
//! that drives it behind the synchronous [`Backend`](super::Backend) trait,
//! and the classification of failures into "retry may help" and "it will
//! not".

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response may stay silent (between two reads of its body).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// TLS settings for private endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM files with extra CA certificates to trust (besides the system's).
    pub ca_certs: Vec<PathBuf>,
    /// Accept any server certificate. For tests and emergencies only.
    pub insecure: bool,
}

/// Whether retrying a failed request can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    /// A server error (5xx), throttling (429, 503), a timeout or a connection
    /// that broke after it was made: retrying may help.
    Transient,
    /// The connection could not be made (refused, no such host). Retried
    /// only once the server has been reached before: an endpoint that never
    /// answered is a configuration error, not a hiccup.
    Connect,
    /// The server said no (403, 404 bucket, 400, ...): retrying will not help.
    Permanent,
}

/// A failed request to a storage service, carried as the source of
/// [`Error::Backend`], so that [`super::retry`] can tell whether to retry.
#[derive(Debug, thiserror::Error)]
pub struct RequestError {
    /// Whether a retry may help.
    pub kind: RequestErrorKind,
    /// What went wrong, with the server's words when it gave any.
    pub message: String,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl RequestError {
    /// A new error.
    pub fn new(kind: RequestErrorKind, message: impl Into<String>) -> RequestError {
        RequestError {
            kind,
            message: message.into(),
        }
    }

    /// The error for an HTTP status the server answered with.
    pub fn status(status: u16, what: impl fmt::Display) -> RequestError {
        RequestError::new(status_kind(status), format!("HTTP {status}: {what}"))
    }

    /// The error for a failure of the HTTP client.
    pub fn client(e: &reqwest::Error) -> RequestError {
        // reqwest's Display is terse ("error sending request"); the chain of
        // sources says what actually happened (refused, reset, ...).
        let mut message = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        let kind = if e.is_connect() {
            RequestErrorKind::Connect
        } else if e.is_builder() || e.is_redirect() {
            RequestErrorKind::Permanent
        } else {
            // Timeouts, resets, bodies cut short.
            RequestErrorKind::Transient
        };
        RequestError::new(kind, message)
    }

    /// Wraps into the crate's error, naming the operation and the object.
    pub fn into_error(self, op: &'static str, location: impl Into<String>) -> Error {
        let io_kind = match self.kind {
            RequestErrorKind::Transient => std::io::ErrorKind::Interrupted,
            RequestErrorKind::Connect => std::io::ErrorKind::ConnectionRefused,
            RequestErrorKind::Permanent => std::io::ErrorKind::Other,
        };
        Error::Backend {
            op,
            location: location.into(),
            source: std::io::Error::new(io_kind, self),
        }
    }

    /// The request error behind `e`, if it is one.
    pub fn of(e: &Error) -> Option<&RequestError> {
        match e {
            Error::Backend { source, .. } => source.get_ref()?.downcast_ref::<RequestError>(),
            _ => None,
        }
    }
}

/// 408 (request timeout), 429 (too many requests) and 5xx may pass; the
/// rest of 4xx is the client's fault and will not.
fn status_kind(status: u16) -> RequestErrorKind {
    match status {
        408 | 429 | 500..=599 => RequestErrorKind::Transient,
        _ => RequestErrorKind::Permanent,
    }
}

/// The HTTP client and the runtime that drives it.
#[derive(Clone)]
pub(crate) struct Http {
    /// Runs the client's futures; owned here so that callers stay synchronous.
    pub rt: Arc<tokio::runtime::Runtime>,
    /// The client, with TLS settings applied; cheap to clone.
    pub client: reqwest::Client,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http").finish_non_exhaustive()
    }
}

impl Http {
    /// A client with `tls` applied and `connections` idle connections kept.
    pub fn new(tls: &TlsOptions, connections: usize) -> Result<Http> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stash-http")
            .enable_all()
            .build()
            .map_err(|e| Error::local("start HTTP runtime", "(tokio)", e))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .pool_max_idle_per_host(connections.max(1))
            // Repository endpoints are named explicitly; a proxy from the
            // environment would only surprise (and loopback tests break).
            .no_proxy()
            .user_agent(concat!("stash/", env!("CARGO_PKG_VERSION")));
        for path in &tls.ca_certs {
            let pem =
                std::fs::read(path).map_err(|e| Error::local("read CA certificate", path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::InvalidArgument(format!(
                    "CA certificate file {}: not PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "CA certificate file {}: no certificate in it",
                    path.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if tls.insecure {
            tracing::warn!("TLS certificate verification is off (--insecure-tls)");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| Error::InvalidArgument(format!("HTTP client: {e}")))?;
        Ok(Http {
            rt: Arc::new(rt),
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(status_kind(s), RequestErrorKind::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 416] {
            assert_eq!(status_kind(s), RequestErrorKind::Permanent, "{s}");
        }
    }

    #[test]
    fn the_request_error_survives_wrapping() {
        let e = RequestError::status(503, "Slow Down").into_error("write", "s3:h/b/data/ab/abcd");
        assert_eq!(
            e.to_string(),
            "write s3:h/b/data/ab/abcd: HTTP 503: Slow Down"
        );
        assert_eq!(
            RequestError::of(&e).map(|r| r.kind),
            Some(RequestErrorKind::Transient)
        );
        let local = Error::NotFound {
            location: "x".into(),
        };
        assert!(RequestError::of(&local).is_none());
    }

    #[test]
    fn bad_ca_files_are_refused_with_their_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let tls = TlsOptions {
            ca_certs: vec![p.clone()],
            insecure: false,
        };
        let e = Http::new(&tls, 2).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        let missing = TlsOptions {
            ca_certs: vec![d.path().join("absent.pem")],
            insecure: false,
        };
        let e = Http::new(&missing, 2).unwrap_err().to_string();
        assert!(e.contains("absent.pem"), "{e}");
    }
}
