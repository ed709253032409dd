//! Storage behind a small trait. Names are the hex ids restic uses (or
//! `config`); where a backend puts them is its own business.
//!
//! Implementations: [`local`] (a directory), [`rest`] (restic's REST
//! server protocol) and [`object_store`] (S3, Google Cloud Storage and Azure
//! Blob Storage through OpenDAL). [`location`] parses restic's repository
//! strings, [`retry`] and [`limit`] wrap any backend with retries of
//! transient failures and a bound on concurrent requests; [`open`] puts
//! them together.

mod http;
pub mod limit;
pub mod local;
pub mod location;
pub mod object_store;
mod open;
pub mod rest;
pub mod retry;

pub use http::{RequestError, RequestErrorKind, TlsOptions};
pub use location::Location;
pub use open::{open, OpenOptions};

use crate::error::Result;
/// The kinds of files in a repository (defined with the format, which names
/// them too).
pub use crate::format::repofile::FileType;

/// Concurrent requests to a remote backend unless told otherwise (restic's
/// default too).
pub const DEFAULT_CONNECTIONS: usize = 5;

/// A file name and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The name (hex id).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Where a repository's files live.
///
/// Implementations must make `write` atomic: a reader never sees a partly
/// written file under its final name.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Human-readable location, for messages.
    fn location(&self) -> String;

    /// Creates the directory layout of a new repository.
    fn create(&self) -> Result<()>;

    /// Lists the files of one kind (not for [`FileType::Config`]).
    fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>>;

    /// Reads a whole file.
    fn read(&self, tpe: FileType, name: &str) -> Result<Vec<u8>>;

    /// Reads `length` bytes at `offset`.
    fn read_range(&self, tpe: FileType, name: &str, offset: u64, length: u32) -> Result<Vec<u8>>;

    /// Writes a file atomically; overwriting an existing file is allowed
    /// only for content-addressed files, where the content is the same.
    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> Result<()>;

    /// Removes a file.
    fn remove(&self, tpe: FileType, name: &str) -> Result<()>;

    /// Whether a file exists.
    fn exists(&self, tpe: FileType, name: &str) -> Result<bool>;

    /// How many requests this backend should have in flight at once: the
    /// engine keeps at most this many reads or writes going. Backends that
    /// enforce a limit themselves (see [`limit::LimitedBackend`]) return it.
    fn connections(&self) -> usize {
        2
    }
}
