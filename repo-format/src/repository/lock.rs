//! Repository locks as restic takes them: a lock file under `locks/`,
//! refreshed every five minutes while held, removed when released.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::repofile::LockFile;
use crate::repository::{whoami, Repository};

/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// A held lock; released (its file removed) on drop.
#[derive(Debug)]
pub struct RepoLock {
    repo: Arc<Repository>,
    name: Arc<Mutex<String>>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
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

/// Looks for a live lock that conflicts with taking one of kind
/// `exclusive` (ignoring the lock named `ours`).
fn conflicting(repo: &Repository, exclusive: bool, ours: Option<&str>) -> Result<Option<LockFile>> {
    let (_, host) = whoami();
    let now = chrono::Local::now().fixed_offset();
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
            continue;
        }
        if exclusive || lock.exclusive {
            return Ok(Some(lock));
        }
    }
    Ok(None)
}

impl RepoLock {
    /// Takes a lock: exclusive (prune, forget) or shared (backup, restore, check).
    pub fn acquire(repo: Arc<Repository>, exclusive: bool) -> Result<RepoLock> {
        let locked = |l: LockFile| Error::Locked {
            kind: if l.exclusive { "exclusively" } else { "" },
            holder: l.describe(),
        };
        if let Some(l) = conflicting(&repo, exclusive, None)? {
            return Err(locked(l));
        }
        let id = repo.save_unpacked(FileType::Lock, &new_lock_file(exclusive).to_json())?;
        let name = id.to_hex();
        // Someone may have locked between our check and our write: look again.
        if let Some(l) = conflicting(&repo, exclusive, Some(&name))? {
            let _ = repo.backend().remove(FileType::Lock, &name);
            return Err(locked(l));
        }
        let name = Arc::new(Mutex::new(name));
        let (tx, rx) = mpsc::channel::<()>();
        let (r2, n2) = (repo.clone(), name.clone());
        let refresher = std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                    match r2.save_unpacked(FileType::Lock, &new_lock_file(exclusive).to_json()) {
                        Ok(new) => {
                            let old = std::mem::replace(
                                &mut *n2.lock().expect("lock name"),
                                new.to_hex(),
                            );
                            let _ = r2.backend().remove(FileType::Lock, &old);
                            tracing::debug!(lock = %new, "refreshed lock");
                        }
                        Err(e) => tracing::warn!(error = %e, "could not refresh lock"),
                    }
                }
            })
            .map_err(|e| Error::local("start lock refresher", "", e))?;
        Ok(RepoLock {
            repo,
            name,
            stop: Some(tx),
            refresher: Some(refresher),
        })
    }

    /// The current lock file's name.
    pub fn name(&self) -> String {
        self.name.lock().expect("lock name").clone()
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
}
