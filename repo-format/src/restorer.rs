//! Restore: recreate a snapshot's tree below a target directory.
//!
//! Safety comes first: every name from the repository is checked (no empty
//! names, `.`, `..`, `/` or NUL), nothing is ever followed out of the target
//! (an existing symlink where a directory or file goes is replaced, files are
//! opened with `O_NOFOLLOW`), and a damaged blob costs only the file that
//! holds it: the rest is restored, the damage is reported, and the caller
//! exits non-zero.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::filter::Patterns;
use crate::id::Id;
use crate::repofile::tree::gomode;
use crate::repofile::{BlobType, Node, NodeType};
use crate::repository::Repository;

/// What to restore and where.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Restore only paths matching these patterns (and their parents).
    pub includes: Vec<String>,
    /// Skip paths matching these patterns.
    pub excludes: Vec<String>,
}

/// A problem met during restore.
#[derive(Debug, Clone)]
pub struct RestoreError {
    /// The path in the snapshot.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreResult {
    /// Regular files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries (symlinks, FIFOs, devices).
    pub others: u64,
    /// Bytes written.
    pub bytes: u64,
    /// What could not be restored.
    pub errors: Vec<RestoreError>,
}

struct Restorer<'a> {
    repo: &'a Repository,
    includes: Patterns,
    excludes: Patterns,
    /// (device, inode) of hard-linked files already restored → their path.
    hardlinks: HashMap<(u64, u64), PathBuf>,
    result: RestoreResult,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn join_snap(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = parent.to_vec();
    if v.last() != Some(&b'/') {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

impl Restorer<'_> {
    fn fail(&mut self, snap_path: &[u8], message: String) {
        tracing::warn!(path = %lossy(snap_path), %message, "restore error");
        self.result.errors.push(RestoreError {
            path: lossy(snap_path),
            message,
        });
    }

    /// Whether the node at `snap_path` is selected by the patterns.
    fn selected(&self, snap_path: &[u8]) -> bool {
        if self.excludes.matches(snap_path) {
            return false;
        }
        self.includes.is_empty() || self.includes.matches(snap_path)
    }

    /// Restores the children of a tree into `dir` (which exists). Returns
    /// whether anything was restored.
    fn restore_tree(&mut self, tree_id: &Id, dir: &Path, snap_dir: &[u8]) -> Result<bool> {
        let tree = match self.repo.load_tree(tree_id) {
            Ok(t) => t,
            Err(e) if is_damage(&e) => {
                self.fail(snap_dir, format!("cannot load tree {tree_id}: {e}"));
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut any = false;
        for node in &tree.nodes {
            let snap_path = join_snap(snap_dir, &node.name);
            if let Err(why) = Node::check_name(&node.name) {
                self.fail(
                    &snap_path,
                    format!(
                        "refusing unsafe name {:?} in tree {tree_id}: {why}",
                        lossy(&node.name)
                    ),
                );
                continue;
            }
            if self.excludes.matches(&snap_path) {
                continue;
            }
            let path = dir.join(OsStr::from_bytes(&node.name));
            if node.node_type == NodeType::Dir {
                any |= self.restore_dir(node, &path, &snap_path)?;
            } else if self.selected(&snap_path) {
                any |= self.restore_leaf(node, &path, &snap_path)?;
            }
        }
        Ok(any)
    }

    fn restore_dir(&mut self, node: &Node, path: &Path, snap_path: &[u8]) -> Result<bool> {
        let selected = self.selected(snap_path);
        if !selected && !self.includes.may_match_below(snap_path) {
            return Ok(false);
        }
        let Some(subtree) = node.subtree else {
            self.fail(
                snap_path,
                "directory without subtree in the snapshot".into(),
            );
            return Ok(false);
        };
        let created = match prepare_dir(path) {
            Ok(c) => c,
            Err(e) => {
                self.fail(
                    snap_path,
                    format!("create directory {}: {e}", path.display()),
                );
                return Ok(false);
            }
        };
        let any = self.restore_tree(&subtree, path, snap_path)?;
        if !selected && !any {
            if created {
                let _ = fs::remove_dir(path);
            }
            return Ok(false);
        }
        // Directory metadata last, after its children are in place.
        self.set_metadata(node, path, snap_path);
        self.result.dirs += 1;
        Ok(true)
    }

    fn restore_leaf(&mut self, node: &Node, path: &Path, snap_path: &[u8]) -> Result<bool> {
        if let Err(e) = remove_non_dir(path) {
            self.fail(
                snap_path,
                format!("remove existing {}: {e}", path.display()),
            );
            return Ok(false);
        }
        let res = match node.node_type {
            NodeType::File => {
                if node.links > 1 {
                    if let Some(first) = self.hardlinks.get(&(node.device_id, node.inode)).cloned()
                    {
                        return match fs::hard_link(&first, path) {
                            Ok(()) => {
                                self.result.files += 1;
                                Ok(true)
                            }
                            Err(e) => {
                                self.fail(
                                    snap_path,
                                    format!("hard link to {}: {e}", first.display()),
                                );
                                Ok(false)
                            }
                        };
                    }
                }
                match self.write_file(node, path, snap_path)? {
                    true => {
                        if node.links > 1 {
                            self.hardlinks
                                .insert((node.device_id, node.inode), path.to_path_buf());
                        }
                        self.result.files += 1;
                        Ok(())
                    }
                    false => return Ok(false),
                }
            }
            NodeType::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&node.link_target), path)
            }
            NodeType::Fifo => {
                nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(std::io::Error::from)
            }
            NodeType::Dev | NodeType::Chardev => {
                let kind = if node.node_type == NodeType::Dev {
                    nix::sys::stat::SFlag::S_IFBLK
                } else {
                    nix::sys::stat::SFlag::S_IFCHR
                };
                nix::sys::stat::mknod(
                    path,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    node.device as _,
                )
                .map_err(std::io::Error::from)
            }
            // Sockets belong to a running process; restic does not restore them either.
            NodeType::Socket => return Ok(false),
            NodeType::Dir | NodeType::Irregular => {
                self.fail(
                    snap_path,
                    format!("cannot restore a node of type {}", node.node_type.as_str()),
                );
                return Ok(false);
            }
        };
        if let Err(e) = res {
            self.fail(snap_path, format!("create {}: {e}", path.display()));
            return Ok(false);
        }
        if node.node_type != NodeType::File {
            self.result.others += 1;
        }
        self.set_metadata(node, path, snap_path);
        Ok(true)
    }

    /// Writes a file's content. On a damaged blob the partial file is
    /// removed and the damage reported; `Ok(false)` then.
    fn write_file(&mut self, node: &Node, path: &Path, snap_path: &[u8]) -> Result<bool> {
        let mut f = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                self.fail(snap_path, format!("create {}: {e}", path.display()));
                return Ok(false);
            }
        };
        let empty = Vec::new();
        let content = node.content.as_ref().unwrap_or(&empty);
        let mut written = 0u64;
        for (i, id) in content.iter().enumerate() {
            let data = match self.repo.load_blob(BlobType::Data, id) {
                Ok(d) => d,
                Err(e) if is_damage(&e) => {
                    drop(f);
                    let _ = fs::remove_file(path);
                    self.fail(
                        snap_path,
                        format!("not restored: blob {i} ({id}) at file offset {written} is damaged or missing: {e}"),
                    );
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = f.write_all(&data) {
                drop(f);
                let _ = fs::remove_file(path);
                self.fail(snap_path, format!("write {}: {e}", path.display()));
                return Ok(false);
            }
            written += data.len() as u64;
        }
        self.result.bytes += written;
        Ok(true)
    }

    /// Owner, mode, xattrs and times, in the order that keeps them:
    /// chown clears setuid/setgid, so chmod comes after it; times last.
    fn set_metadata(&mut self, node: &Node, path: &Path, snap_path: &[u8]) {
        let mut problems = Vec::new();
        if let Err(e) = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)) {
            // Like cp -a and restic: only root is expected to be able to chown.
            if nix::unistd::geteuid().is_root() || e.kind() != std::io::ErrorKind::PermissionDenied
            {
                problems.push(format!("chown: {e}"));
            }
        }
        for xa in &node.extended_attributes {
            if let Err(e) = xattr::set(path, &xa.name, &xa.value) {
                problems.push(format!("xattr {}: {e}", xa.name));
            }
        }
        if node.node_type != NodeType::Symlink {
            let perm = fs::Permissions::from_mode(gomode::to_unix_perm(node.mode));
            if let Err(e) = fs::set_permissions(path, perm) {
                problems.push(format!("chmod: {e}"));
            }
        }
        let ts = |t: &chrono::DateTime<chrono::FixedOffset>| {
            filetime::FileTime::from_unix_time(t.timestamp(), t.timestamp_subsec_nanos())
        };
        if let Err(e) = filetime::set_symlink_file_times(path, ts(&node.atime), ts(&node.mtime)) {
            problems.push(format!("set times: {e}"));
        }
        if !problems.is_empty() {
            self.fail(snap_path, format!("metadata: {}", problems.join("; ")));
        }
    }
}

/// Errors that mean "this part of the repository is damaged or missing",
/// after which a restore goes on with the rest.
fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::Mac { .. }
            | Error::Ciphertext { .. }
            | Error::BlobHashMismatch { .. }
            | Error::BlobNotFound { .. }
            | Error::Compression { .. }
            | Error::Json { .. }
            | Error::Format { .. }
            | Error::NotFound { .. }
            | Error::Backend { .. }
    )
}

/// Makes `path` a real directory: an existing symlink or file there is
/// removed first, so a restore never follows a link out of the target.
/// Returns whether the directory was created.
fn prepare_dir(path: &Path) -> std::io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(false),
        Ok(_) => {
            fs::remove_file(path)?;
            fs::create_dir(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(path)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `path` unless it is absent; a directory in the
/// way of a file is an error (we do not delete user directories).
fn remove_non_dir(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Err(std::io::Error::other("a directory is in the way")),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Restores the tree `tree` (a snapshot's root) into `opts.target`.
/// The repository's index must be loaded.
pub fn restore(repo: &Repository, tree: &Id, opts: &RestoreOptions) -> Result<RestoreResult> {
    let includes = Patterns::new(&opts.includes).map_err(Error::InvalidArgument)?;
    let excludes = Patterns::new(&opts.excludes).map_err(Error::InvalidArgument)?;
    fs::create_dir_all(&opts.target)
        .map_err(|e| Error::local("create target directory", &opts.target, e))?;
    let target = fs::canonicalize(&opts.target)
        .map_err(|e| Error::local("resolve target", &opts.target, e))?;
    let mut r = Restorer {
        repo,
        includes,
        excludes,
        hardlinks: HashMap::new(),
        result: RestoreResult::default(),
    };
    r.restore_tree(tree, &target, b"/")?;
    Ok(r.result)
}
