//! Test support for Stash's integration and end-to-end tests.
//!
//! - [`fixture`] builds a directory tree holding every kind of entry, name
//!   and metadata a backup must carry through unchanged;
//! - [`compare`] compares two trees byte for byte and in metadata;
//! - [`restic`] runs the real restic binary, the oracle for the repository
//!   format;
//! - [`servers`] starts the real storage servers (rest-server, MinIO,
//!   Azurite, fake-gcs-server, toxiproxy) that `hack/test-servers.sh` builds;
//! - [`faults`] is an HTTP proxy that answers some requests with 503;
//! - [`postgres`] runs a real PostgreSQL server (Debian's package);
//! - [`prng`] is the deterministic generator behind fixture content, for
//!   tests that draw random choices from a printed seed.

pub mod compare;
pub mod faults;
pub mod fixture;
pub mod postgres;
pub mod prng;
pub mod restic;
pub mod servers;

/// A fresh temporary directory, removed when dropped.
///
/// Panics if one cannot be made: there is nothing a test can do about it.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stash-test-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}
