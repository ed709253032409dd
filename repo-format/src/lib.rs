//! The restic repository format, version 1 and 2, and the engine on top of
//! it: backup (archiver), restore (restorer) and check (checker).
//!
//! The `repofile` modules and `crypto` are pure: bytes in, bytes out. I/O
//! happens in `backend` implementations and in the engine modules.

pub mod archiver;
pub mod backend;
pub mod checker;
pub mod chunker;
pub mod compress;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod filter;
pub mod id;
pub mod index;
pub mod lock;
pub mod packer;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repofile;
pub mod repository;
pub mod restorer;
pub mod retention;
pub mod writer;

pub use backend::{local::LocalBackend, Backend, FileType};
pub use crypto::Key;
pub use error::{Error, Result};
pub use id::Id;
pub use repofile::key::KdfParams;
pub use repofile::{BlobType, Config, Node, NodeType, Snapshot, Tree};
pub use repository::{Repository, RepositoryStats};
pub use writer::{Compression, WriteOptions, WriteStats};
