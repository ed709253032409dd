//! Live counters of a backup or restore, read by whoever shows progress.
//! Workers only add to atomics; nothing here blocks them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Progress of one backup or restore.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files finished.
    pub files_done: AtomicU64,
    /// Bytes of file content finished.
    pub bytes_done: AtomicU64,
    /// Files expected in all (grows while the scan runs).
    pub files_total: AtomicU64,
    /// Bytes expected in all (grows while the scan runs).
    pub bytes_total: AtomicU64,
    /// The totals are final.
    pub scan_done: AtomicBool,
    /// Entries that failed.
    pub errors: AtomicU64,
    /// Set by [`Progress::cancel`]: the operation stops at the next entry.
    pub cancelled: AtomicBool,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Files finished.
    pub files_done: u64,
    /// Bytes finished.
    pub bytes_done: u64,
    /// Files expected.
    pub files_total: u64,
    /// Bytes expected.
    pub bytes_total: u64,
    /// Whether the totals are final.
    pub scan_done: bool,
    /// Entries that failed.
    pub errors: u64,
}

impl Progress {
    /// Asks the operation reporting here to stop: a backup then ends with
    /// [`crate::Error::Cancelled`] before writing its snapshot.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`Progress::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProgressSnapshot {
            files_done: l(&self.files_done),
            bytes_done: l(&self.bytes_done),
            files_total: l(&self.files_total),
            bytes_total: l(&self.bytes_total),
            scan_done: self.scan_done.load(Ordering::Relaxed),
            errors: l(&self.errors),
        }
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_file(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}
