//! The restic repository format, version 1 and 2, and the engine on top of
//! it. Three layers, one folder each, and dependencies run downwards only:
//!
//! - [`ops`]: the operations a user names by their verbs — backup, restore,
//!   check, prune, forget, copy, repair — over the repository;
//! - [`repository`]: an open repository (keys, config, the in-memory index),
//!   and underneath it the pack writer, the packer and locks;
//! - [`format`]: the pure format — crypto, ids, the chunker, compression and
//!   every repository file (`repofile::*`): bytes in, bytes out, no I/O;
//! - [`backend`]: storage behind one synchronous trait (local, S3, GCS,
//!   Azure, REST), with retries and limits as wrappers.
//!
//! [`error`] is shared by all of them.

pub mod backend;
pub mod error;
pub mod format;
pub mod ops;
pub mod repository;

pub use backend::{local::LocalBackend, Backend, FileType};
pub use error::{Error, Result};
pub use format::crypto::Key;
pub use format::id::Id;
pub use format::repofile::key::KdfParams;
pub use format::repofile::{BlobType, Config, Node, NodeType, Snapshot, Tree};
pub use repository::writer::{Compression, WriteOptions, WriteStats};
pub use repository::{Repository, RepositoryStats};
