//! A repository on a local (or mounted) file system, in restic's layout:
//! `config`, `keys/`, `locks/`, `snapshots/`, `index/`, `data/<2 hex>/`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Backend, FileInfo, FileType};
use crate::error::{Error, Result};

/// The local backend.
///
/// Packs are written without waiting for the disk; every other file (index,
/// snapshot, lock, key, config) is fsynced, and before it is written every
/// pack written so far is fsynced too, with its directory. Because an index
/// file is always written after the packs it names, and a snapshot after its
/// index, no durable file can refer to a pack that is not durable, while
/// the disk flushes packs in the background as the backup goes on instead
/// of stalling an uploader on each one.
#[derive(Debug)]
pub struct LocalBackend {
    /// The repository directory.
    root: PathBuf,
    /// Packs written but not yet fsynced.
    unsynced: std::sync::Mutex<Vec<PathBuf>>,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            unsynced: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Fsyncs every pack written so far, and the directories naming them.
    pub fn sync_packs(&self) -> Result<()> {
        let packs = std::mem::take(&mut *self.unsynced.lock().expect("unsynced packs"));
        let mut dirs = std::collections::BTreeSet::new();
        for p in &packs {
            match fs::File::open(p).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // Removed meanwhile (prune): nothing to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::err("sync", p, e)),
            }
            if let Some(d) = p.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| Self::err("sync directory", &d, e))?;
        }
        Ok(())
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, tpe: FileType, name: &str) -> PathBuf {
        match tpe {
            FileType::Config => self.root.join("config"),
            FileType::Pack => self
                .root
                .join("data")
                .join(name.get(..2).unwrap_or(name))
                .join(name),
            t => self.root.join(t.dirname()).join(name),
        }
    }

    fn err(op: &'static str, path: &Path, source: std::io::Error) -> Error {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                location: path.display().to_string(),
            }
        } else {
            Error::Backend {
                op,
                location: path.display().to_string(),
                source,
            }
        }
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn create(&self) -> Result<()> {
        let mut dirs: Vec<PathBuf> = FileType::DIRS
            .iter()
            .map(|t| self.root.join(t.dirname()))
            .collect();
        for i in 0..=255u8 {
            dirs.push(self.root.join("data").join(format!("{i:02x}")));
        }
        for d in dirs {
            fs::create_dir_all(&d).map_err(|e| Self::err("create directory", &d, e))?;
        }
        Ok(())
    }

    fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>> {
        let dir = self.root.join(tpe.dirname());
        let mut out = Vec::new();
        let walk = |d: &Path, out: &mut Vec<FileInfo>| -> Result<()> {
            let rd = match fs::read_dir(d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Self::err("list", d, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| Self::err("list", d, e))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                // Temporary files of interrupted writes are not part of the repository.
                if name.starts_with('.') || name.contains(".tmp-") {
                    continue;
                }
                let md = ent
                    .metadata()
                    .map_err(|e| Self::err("stat", &ent.path(), e))?;
                if md.is_file() {
                    out.push(FileInfo {
                        name,
                        size: md.len(),
                    });
                }
            }
            Ok(())
        };
        if tpe == FileType::Pack {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(Self::err("list", &dir, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| Self::err("list", &dir, e))?;
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&ent.path(), &mut out)?;
                }
            }
        } else {
            walk(&dir, &mut out)?;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, tpe: FileType, name: &str) -> Result<Vec<u8>> {
        let p = self.path(tpe, name);
        fs::read(&p).map_err(|e| Self::err("read", &p, e))
    }

    fn read_range(&self, tpe: FileType, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        let p = self.path(tpe, name);
        let mut f = fs::File::open(&p).map_err(|e| Self::err("open", &p, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Self::err("seek", &p, e))?;
        let mut buf = vec![0u8; length as usize];
        f.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Backend {
                    op: "read",
                    location: format!(
                        "{} (bytes {offset}..{}): file is shorter (truncated?)",
                        p.display(),
                        offset + u64::from(length)
                    ),
                    source: e,
                }
            } else {
                Self::err("read", &p, e)
            }
        })?;
        Ok(buf)
    }

    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> Result<()> {
        if tpe != FileType::Pack {
            self.sync_packs()?;
        }
        let p = self.path(tpe, name);
        let dir = p.parent().expect("has parent");
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| Self::err("create directory", dir, e))?;
        }
        // Write to a temporary name, fsync, then rename: a crash leaves at
        // worst a temporary file that `list` ignores.
        let tmp = dir.join(format!(
            "{name}.tmp-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            if tpe == FileType::Pack {
                // Start writing the pack to disk now, without waiting: the
                // disk works while we compute, and the fsync before the next
                // index finds little left to do. (On Linux, DONTNEED starts
                // writeback of dirty pages; it also keeps a backup from
                // filling the page cache with data nobody reads again.)
                let _ = nix::fcntl::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            } else {
                f.sync_all()?;
            }
            drop(f);
            // Repository files are immutable; restic makes them read-only too.
            let mut perm = fs::metadata(&tmp)?.permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
            fs::set_permissions(&tmp, perm)?;
            fs::rename(&tmp, &p)?;
            if tpe != FileType::Pack {
                // The rename itself must be durable too.
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(Self::err("write", &p, e));
        }
        if tpe == FileType::Pack {
            self.unsynced.lock().expect("unsynced packs").push(p);
        }
        Ok(())
    }

    fn remove(&self, tpe: FileType, name: &str) -> Result<()> {
        let p = self.path(tpe, name);
        fs::remove_file(&p).map_err(|e| Self::err("remove", &p, e))
    }

    fn exists(&self, tpe: FileType, name: &str) -> Result<bool> {
        let p = self.path(tpe, name);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Self::err("stat", &p, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path().join("repo"));
        b.create().unwrap();
        assert!(d.path().join("repo/data/ab").is_dir());
        let name = "ab".to_string() + &"0".repeat(62);
        b.write(FileType::Pack, &name, b"hello world").unwrap();
        assert!(d.path().join("repo/data/ab").join(&name).is_file());
        assert_eq!(b.read(FileType::Pack, &name).unwrap(), b"hello world");
        assert_eq!(b.read_range(FileType::Pack, &name, 6, 5).unwrap(), b"world");
        assert!(b.read_range(FileType::Pack, &name, 6, 50).is_err());
        assert_eq!(
            b.list(FileType::Pack).unwrap(),
            vec![FileInfo {
                name: name.clone(),
                size: 11
            }]
        );
        assert!(b.exists(FileType::Pack, &name).unwrap());
        b.remove(FileType::Pack, &name).unwrap();
        assert!(matches!(
            b.read(FileType::Pack, &name),
            Err(Error::NotFound { .. })
        ));
        b.write(FileType::Config, "config", b"c").unwrap();
        assert_eq!(b.read(FileType::Config, "config").unwrap(), b"c");
    }
}
