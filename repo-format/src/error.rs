//! The one error type of the repository crate.
//!
//! Every variant names the object it is about (file, pack, blob, path) so
//! that the message a user sees says what is wrong and where.

use std::path::PathBuf;

use crate::format::id::Id;
use crate::format::repofile::FileType;

/// Errors of the repository format and engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the backend could not be read or written.
    #[error("{op} {location}: {source}")]
    Backend {
        /// What was being done (`read`, `write`, `list`, ...).
        op: &'static str,
        /// Where (a path or URL, with the file name).
        location: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file the repository should have is not there.
    #[error("{location} does not exist")]
    NotFound {
        /// Where it was looked for.
        location: String,
    },

    /// There is no repository at the location.
    #[error("no repository at {location} (no config file found); create one with `stash init`")]
    NoRepository {
        /// The repository location.
        location: String,
    },

    /// `init` found a repository already there.
    #[error("a repository already exists at {location}")]
    AlreadyInitialized {
        /// The repository location.
        location: String,
    },

    /// None of the key files opened with the given password.
    #[error("wrong password or no key matches (tried {tried} key file(s))")]
    WrongPassword {
        /// How many key files were tried.
        tried: usize,
    },

    /// The repository has no key files.
    #[error("the repository at {location} has no key files")]
    NoKeys {
        /// The repository location.
        location: String,
    },

    /// An authenticated ciphertext did not verify.
    #[error("{what}: ciphertext verification failed (MAC mismatch): the data is damaged or was written with another key")]
    Mac {
        /// The object whose MAC failed.
        what: String,
    },

    /// Data too short or otherwise malformed at the crypto layer.
    #[error("{what}: invalid ciphertext: {reason}")]
    Ciphertext {
        /// The object.
        what: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// A stored file's content does not hash to its name.
    #[error("{file_type} file {name}: content hash is {actual}, does not match its name: the file is damaged")]
    HashMismatch {
        /// The kind of file.
        file_type: FileType,
        /// Its name.
        name: String,
        /// The hash of what was read.
        actual: Id,
    },

    /// A blob's plaintext does not hash to its id.
    #[error("blob {id} in pack {pack}: content hash is {actual}: the blob is damaged")]
    BlobHashMismatch {
        /// The blob id.
        id: Id,
        /// The pack it was read from.
        pack: Id,
        /// The hash of the decrypted content.
        actual: Id,
    },

    /// A decoded structure (JSON, pack header, ...) is invalid.
    #[error("{what}: {reason}")]
    Format {
        /// The object being decoded.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// JSON that does not decode.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// The object being decoded.
        what: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// zstd (de)compression failed.
    #[error("{what}: zstd: {source}")]
    Compression {
        /// The object.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The repository uses a version we do not know.
    #[error("repository version {version} is not supported (1 and 2 are)")]
    UnsupportedVersion {
        /// The version in the config.
        version: u32,
    },

    /// A blob is not in the index.
    #[error(
        "{tpe} blob {id} is not in the index; run `stash check` (the repository may be damaged)"
    )]
    BlobNotFound {
        /// Blob type.
        tpe: crate::format::repofile::BlobType,
        /// Blob id.
        id: Id,
    },

    /// An id prefix matched nothing or more than one file.
    #[error("{what}")]
    Ambiguous {
        /// The message.
        what: String,
    },

    /// A local file or directory of the user could not be read or written.
    #[error("{path:?}: {op}: {source}")]
    Local {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Another process holds a lock that conflicts with ours.
    #[error("repository is already locked {kind} by {holder}; if that process is gone, run `stash unlock`")]
    Locked {
        /// "exclusively" or "".
        kind: &'static str,
        /// Who holds the lock and since when.
        holder: String,
    },

    /// An operation refused to run because it could lose data.
    #[error("{op} refused: {reason}")]
    Refused {
        /// The operation (`prune`, `copy`, ...).
        op: &'static str,
        /// Why, and what to do.
        reason: String,
    },

    /// A parameter given by the caller is invalid.
    #[error("{0}")]
    InvalidArgument(String),

    /// The caller asked the operation to stop (see
    /// [`crate::ops::progress::Progress::cancel`]); nothing was committed.
    #[error("cancelled")]
    Cancelled,

    /// The repository lock could not be refreshed in time
    /// ([`crate::repository::lock::RepoLock::is_lost`]); the operation
    /// stopped before committing anything.
    #[error("the repository lock could not be refreshed in time and was given up; stopped before others could treat it as stale")]
    LockLost,

    /// Too much of a backup's source could not be read
    /// ([`crate::ops::backup::BackupOptions::max_unreadable`]): no snapshot
    /// was written, since an (almost) empty one would pass for a backup.
    #[error("{unreadable} of {} entries could not be read (e.g. {first}); no snapshot written", unreadable + read)]
    Unreadable {
        /// Entries that failed.
        unreadable: u64,
        /// Entries read.
        read: u64,
        /// The first failure.
        first: String,
    },

    /// A backup stream (standard input, a command's output) could not be
    /// read to its end, or its command failed: no snapshot was written.
    #[error("{source_name}: {source}; no snapshot written")]
    Stream {
        /// What the stream is (`standard input`, `command "pg_dumpall"`).
        source_name: String,
        /// The read error (or the command's exit status).
        #[source]
        source: std::io::Error,
    },

    /// scrypt refused the parameters, or they ask for more than
    /// `KdfParams::MAX_MEMORY` or `KdfParams::MAX_WORK`.
    #[error("key derivation: invalid scrypt parameters N={n} r={r} p={p} (N must be a power of two above 1, r and p above 0, and 128·r·N at most 1 GiB, times p at most 16 GiB): the key file is damaged or was not written by restic")]
    Kdf {
        /// N
        n: u64,
        /// r
        r: u32,
        /// p
        p: u32,
    },
}

/// Result type of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Format`].
    pub(crate) fn format(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Local`].
    pub(crate) fn local(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Local {
            op,
            path: path.into(),
            source,
        }
    }
}
