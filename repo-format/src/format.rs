//! The pure format: bytes in, bytes out. Nothing here does I/O or names a
//! backend, a repository or an operation.

pub mod chunker;
pub mod compress;
pub mod crypto;
pub mod id;
pub mod repofile;
