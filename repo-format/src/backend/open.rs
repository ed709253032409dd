//! From a [`Location`] and the options of the command line to a ready
//! backend: the store itself, at most `connections` calls at once, and
//! retries of transient failures around that (outside the limit, so that a
//! call backing off does not hold a connection slot).

use std::sync::Arc;

use super::http::TlsOptions;
use super::limit::LimitedBackend;
use super::local::LocalBackend;
use super::location::Location;
use super::object_store::{Credentials, ObjectStoreBackend};
use super::rest::RestBackend;
use super::retry::{RetryBackend, RetryPolicy};
use super::{Backend, DEFAULT_CONNECTIONS};
use crate::error::Result;

/// How to reach a repository's storage.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// At most this many requests at once (`--connections`); `None` for the
    /// backend's default.
    pub connections: Option<usize>,
    /// CA certificates and the insecure-TLS opt-in.
    pub tls: TlsOptions,
    /// Keys and endpoints of the object stores.
    pub credentials: Credentials,
    /// When to retry.
    pub retry: RetryPolicy,
}

/// The backend for `location`. Nothing is contacted yet: a wrong endpoint
/// or credentials show at the first call.
pub fn open(location: &Location, opts: &OpenOptions) -> Result<Arc<dyn Backend>> {
    let connections = opts.connections.unwrap_or(DEFAULT_CONNECTIONS).max(1);
    let store: Arc<dyn Backend> = match location {
        Location::Local { path } => {
            let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(path.clone()));
            // Local files need no retries; the limit still applies when asked.
            return Ok(match opts.connections {
                Some(n) => Arc::new(LimitedBackend::new(local, n)),
                None => local,
            });
        }
        Location::Rest {
            url,
            user,
            password,
        } => Arc::new(RestBackend::new(
            url,
            user.clone(),
            password.clone(),
            &opts.tls,
            connections,
        )?),
        Location::S3 { .. } | Location::Gcs { .. } | Location::Azure { .. } => Arc::new(
            ObjectStoreBackend::new(location, &opts.credentials, &opts.tls, connections)?,
        ),
    };
    let limited = Arc::new(LimitedBackend::new(store, connections));
    Ok(Arc::new(RetryBackend::new(limited, opts.retry)))
}
