//! Repository locks as restic takes them: a lock file under `locks/`,
//! refreshed every five minutes while held, removed when released.
//!
//! A lock that cannot be refreshed is a lock others will soon consider
//! stale (30 minutes after its last refresh) — and a prune elsewhere then
//! deletes the packs this operation is still writing. So, as restic ≥ 0.16
//! does, a failed refresh is retried with backoff, and once the last good
//! refresh is older than [`LockTiming::give_up_after`] (well before the
//! stale age) the lock is declared lost: [`RepoLock::is_lost`] turns true
//! and the `on_lost` hook runs, which callers use to cancel the operation
//! before it commits anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::repofile::LockFile;
use crate::repository::{whoami, Repository};

/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// How long after its last good refresh a lock is given up: the stale age
/// less one and a half refresh periods (restic's margin), so the operation
/// has stopped before any other process may treat the lock as stale.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30 * 60 - 3 * 5 * 60 / 2);

/// When a held lock is refreshed, and when a lock that cannot be refreshed
/// is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// Period of refreshes while they succeed.
    pub refresh_every: Duration,
    /// Age of the last good refresh at which the lock is declared lost.
    pub give_up_after: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            refresh_every: REFRESH_EVERY,
            give_up_after: GIVE_UP_AFTER,
        }
    }
}

/// Called once, from the refresher thread, when the lock is lost.
pub type OnLost = Box<dyn Fn() + Send + 'static>;

/// A held lock; released (its file removed) on drop.
pub struct RepoLock {
    repo: Arc<Repository>,
    name: Arc<Mutex<String>>,
    lost: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
    /// Stale locks removed when this one was taken.
    stale_removed: Vec<LockFile>,
    /// Live locks of others seen when this one was taken.
    live_others: usize,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock")
            .field("name", &self.name())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// Whether a process with this id exists on this host (restic's test for
/// stale locks of this host).
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn new_lock_file(exclusive: bool) -> LockFile {
    let (username, hostname) = whoami();
    LockFile {
        time: chrono::Local::now().fixed_offset(),
        exclusive,
        hostname,
        username,
        pid: i64::from(std::process::id()),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    }
}

/// What a look at `locks/` found.
#[derive(Debug, Default)]
struct LockScan {
    /// A live lock that conflicts with the one wanted.
    conflict: Option<LockFile>,
    /// Stale locks: of a process of this host that no longer exists, or
    /// not refreshed for [`crate::format::repofile::lock::STALE_AFTER`].
    stale: Vec<(String, LockFile)>,
    /// Live locks besides ours (conflicting or not).
    live_others: usize,
}

/// Reads every lock but `ours` and sorts them into conflicting, stale and
/// live ones, for taking a lock of kind `exclusive`.
fn scan(repo: &Repository, exclusive: bool, ours: Option<&str>) -> Result<LockScan> {
    let (_, host) = whoami();
    let now = chrono::Local::now().fixed_offset();
    let mut out = LockScan::default();
    for id in repo.list_ids(FileType::Lock)? {
        let name = id.to_hex();
        if Some(name.as_str()) == ours {
            continue;
        }
        let lock = match repo.load_unpacked(FileType::Lock, &name) {
            Ok(b) => LockFile::from_json(&b, &name)?,
            // Removed meanwhile: no conflict.
            Err(Error::NotFound { .. }) => continue,
            Err(e) => {
                tracing::warn!(lock = %name, error = %e, "ignoring unreadable lock file");
                continue;
            }
        };
        if lock.is_stale(now, &host, pid_alive) {
            out.stale.push((name, lock));
            continue;
        }
        out.live_others += 1;
        if out.conflict.is_none() && (exclusive || lock.exclusive) {
            out.conflict = Some(lock);
        }
    }
    Ok(out)
}

impl RepoLock {
    /// Takes a lock: exclusive (prune, forget) or shared (backup, restore,
    /// check), refreshed on the default timing; a lost lock only shows in
    /// [`RepoLock::is_lost`].
    pub fn acquire(repo: Arc<Repository>, exclusive: bool) -> Result<RepoLock> {
        Self::acquire_with(repo, exclusive, LockTiming::default(), None)
    }

    /// Takes a lock refreshed on `timing`; `on_lost` runs once if the lock
    /// cannot be refreshed for [`LockTiming::give_up_after`].
    pub fn acquire_with(
        repo: Arc<Repository>,
        exclusive: bool,
        timing: LockTiming,
        on_lost: Option<OnLost>,
    ) -> Result<RepoLock> {
        let locked = |l: LockFile| Error::Locked {
            kind: if l.exclusive { "exclusively" } else { "" },
            holder: l.describe(),
        };
        if let Some(l) = scan(&repo, exclusive, None)?.conflict {
            return Err(locked(l));
        }
        let id = repo.save_unpacked(FileType::Lock, &new_lock_file(exclusive).to_json())?;
        let name = id.to_hex();
        // Someone may have locked between our check and our write: look again.
        let found = scan(&repo, exclusive, Some(&name))?;
        if let Some(l) = found.conflict {
            let _ = repo.backend().remove(FileType::Lock, &name);
            return Err(locked(l));
        }
        // Stale locks are removed, as `restic unlock` does: restic does not
        // skip them when it locks, so a lock left by a killed process would
        // otherwise stop every later restic prune or check until someone
        // unlocks by hand. Their holders are gone (or, 30 minutes without a
        // refresh, have given their lock up themselves).
        let mut stale_removed = Vec::new();
        for (stale, l) in found.stale {
            match repo.backend().remove(FileType::Lock, &stale) {
                Ok(()) | Err(Error::NotFound { .. }) => {
                    tracing::info!(lock = %stale, holder = %l.describe(), "removed a stale lock");
                    stale_removed.push(l);
                }
                Err(e) => {
                    tracing::warn!(lock = %stale, error = %e, "could not remove a stale lock");
                }
            }
        }
        let name = Arc::new(Mutex::new(name));
        let lost = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let (r2, n2, l2) = (repo.clone(), name.clone(), lost.clone());
        let refresher = std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || refresh_loop(&r2, exclusive, &n2, timing, &rx, &l2, on_lost))
            .map_err(|e| Error::local("start lock refresher", "", e))?;
        Ok(RepoLock {
            repo,
            name,
            lost,
            stop: Some(tx),
            refresher: Some(refresher),
            stale_removed,
            live_others: found.live_others,
        })
    }

    /// The current lock file's name.
    pub fn name(&self) -> String {
        self.name.lock().expect("lock name").clone()
    }

    /// The stale locks (of dead processes, or too old) removed when this
    /// lock was taken: evidence that an operation was interrupted.
    pub fn stale_removed(&self) -> &[LockFile] {
        &self.stale_removed
    }

    /// Whether a live lock of another process existed when this one was
    /// taken (after the stale ones were set aside).
    pub fn others_held(&self) -> bool {
        self.live_others > 0
    }

    /// Whether the lock could not be refreshed in time: others may soon
    /// consider it stale, so nothing may be committed under it any more.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// [`Error::LockLost`] once the lock is lost.
    pub fn check(&self) -> Result<()> {
        if self.is_lost() {
            return Err(Error::LockLost);
        }
        Ok(())
    }
}

/// Refreshes the lock every `timing.refresh_every` until told to stop (the
/// sender dropped); a failed refresh is retried sooner, with backoff, and
/// the lock is given up once its last good refresh is too old.
fn refresh_loop(
    repo: &Repository,
    exclusive: bool,
    name: &Mutex<String>,
    timing: LockTiming,
    stop: &mpsc::Receiver<()>,
    lost: &AtomicBool,
    on_lost: Option<OnLost>,
) {
    let mut last_good = Instant::now();
    let mut wait = timing.refresh_every;
    let first_retry = (timing.refresh_every / 10).max(Duration::from_millis(10));
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        match repo.save_unpacked(FileType::Lock, &new_lock_file(exclusive).to_json()) {
            Ok(new) => {
                let old = std::mem::replace(&mut *name.lock().expect("lock name"), new.to_hex());
                let _ = repo.backend().remove(FileType::Lock, &old);
                tracing::debug!(lock = %new, "refreshed lock");
                last_good = Instant::now();
                wait = timing.refresh_every;
            }
            Err(e) => {
                let age = last_good.elapsed();
                if age >= timing.give_up_after {
                    tracing::error!(error = %e, last_refresh_secs = age.as_secs(), "could not refresh the repository lock in time: giving it up and stopping the operation before others may treat it as stale");
                    lost.store(true, Ordering::Relaxed);
                    if let Some(f) = &on_lost {
                        f();
                    }
                    return;
                }
                // Retry soon, backing off, but never past the give-up age.
                wait = if wait == timing.refresh_every {
                    first_retry
                } else {
                    (wait * 2).min(timing.refresh_every)
                };
                wait = wait
                    .min(timing.give_up_after - age)
                    .max(Duration::from_millis(1));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "could not refresh the repository lock; retrying");
            }
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let name = self.name();
        if let Err(e) = self.repo.backend().remove(FileType::Lock, &name) {
            tracing::warn!(lock = %name, error = %e, "could not remove lock file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::KdfParams;

    #[test]
    fn shared_locks_coexist_exclusive_conflicts() {
        let d = tempfile::tempdir().unwrap();
        let b: Arc<dyn crate::Backend> = Arc::new(LocalBackend::new(d.path()));
        let r = Arc::new(Repository::init(b, b"pw", 2, KdfParams::INSECURE_FOR_TESTS).unwrap());
        let a = RepoLock::acquire(r.clone(), false).unwrap();
        let b2 = RepoLock::acquire(r.clone(), false).unwrap();
        let e = RepoLock::acquire(r.clone(), true).unwrap_err();
        assert!(e.to_string().contains("already locked"), "{e}");
        drop(a);
        drop(b2);
        assert!(r.list_ids(FileType::Lock).unwrap().is_empty());
        let x = RepoLock::acquire(r.clone(), true).unwrap();
        assert!(RepoLock::acquire(r.clone(), false).is_err());
        drop(x);
    }

    fn lock_of(pid: u32, exclusive: bool) -> Vec<u8> {
        LockFile {
            pid: i64::from(pid),
            ..new_lock_file(exclusive)
        }
        .to_json()
    }

    /// A lock left by a killed process of this host (its pid gone) neither
    /// blocks an exclusive lock nor survives it; a live process's lock
    /// does block, and is kept.
    #[test]
    fn stale_lock_of_a_dead_process_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let b: Arc<dyn crate::Backend> = Arc::new(LocalBackend::new(d.path()));
        let r = Arc::new(Repository::init(b, b"pw", 2, KdfParams::INSECURE_FOR_TESTS).unwrap());
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        assert!(!pid_alive(i64::from(dead_pid)));
        let stale = r
            .save_unpacked(FileType::Lock, &lock_of(dead_pid, true))
            .unwrap();

        let x = RepoLock::acquire(r.clone(), true).unwrap();
        assert_eq!(x.stale_removed().len(), 1);
        assert_eq!(x.stale_removed()[0].pid, i64::from(dead_pid));
        assert!(!x.others_held());
        let left = r.list_ids(FileType::Lock).unwrap();
        assert_eq!(left.len(), 1, "only our own lock is left");
        assert_ne!(left[0], stale);
        drop(x);

        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let held = r
            .save_unpacked(FileType::Lock, &lock_of(live.id(), false))
            .unwrap();
        let e = RepoLock::acquire(r.clone(), true).unwrap_err();
        assert!(e.to_string().contains("already locked"), "{e}");
        let shared = RepoLock::acquire(r.clone(), false).unwrap();
        assert!(shared.stale_removed().is_empty());
        assert!(shared.others_held());
        drop(shared);
        assert_eq!(r.list_ids(FileType::Lock).unwrap(), vec![held]);
        live.kill().unwrap();
        live.wait().unwrap();
        // Now dead: taken over.
        let x = RepoLock::acquire(r.clone(), true).unwrap();
        assert_eq!(x.stale_removed().len(), 1);
    }
}
