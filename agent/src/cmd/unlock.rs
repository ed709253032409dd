//! `stash unlock`: removes stale locks, or with `--remove-all` every lock.

use anyhow::Result;
use repo_format::error::Error;
use repo_format::format::repofile::LockFile;
use repo_format::repository::lock::pid_alive;
use repo_format::repository::whoami;
use repo_format::FileType;

use crate::cli::GlobalArgs;
use crate::repo;

pub fn run(g: &GlobalArgs, remove_all: bool) -> Result<u8> {
    let r = repo::open(g)?;
    let (_, host) = whoami();
    let now = chrono::Local::now().fixed_offset();
    let mut removed = 0usize;
    for id in r.list_ids(FileType::Lock)? {
        let name = id.to_hex();
        if !remove_all {
            let stale = match r.load_unpacked(FileType::Lock, &name) {
                Ok(b) => match LockFile::from_json(&b, &name) {
                    Ok(l) => l.is_stale(now, &host, pid_alive),
                    Err(e) => {
                        tracing::warn!(lock = %name, error = %e, "keeping unreadable lock file");
                        false
                    }
                },
                Err(Error::NotFound { .. }) => continue,
                Err(e) => {
                    tracing::warn!(lock = %name, error = %e, "keeping unreadable lock file");
                    false
                }
            };
            if !stale {
                continue;
            }
        }
        match r.backend().remove(FileType::Lock, &name) {
            Ok(()) => removed += 1,
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    println!("successfully removed {removed} locks");
    Ok(0)
}
