//! Backup: walk paths, store file contents and trees, write the snapshot.
//!
//! The snapshot keeps the absolute paths of its targets, as restic does:
//! backing up `/srv/data` gives a root tree with `srv`, whose subtree holds
//! `data`. Intermediate directories carry the metadata of the real ones.
//!
//! Entries of one directory are processed in parallel (rayon); results are
//! collected in name order, so the snapshot does not depend on timing or
//! thread count. An error on one file is recorded and the backup goes on;
//! errors of the repository itself stop it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, FixedOffset, TimeZone};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::chunker::BlockChunker;
use crate::format::id::Id;
use crate::format::repofile::tree::gomode;
use crate::format::repofile::{
    BlobType, ExtendedAttribute, Node, NodeType, Snapshot, SnapshotSummary, Tree,
};
use crate::ops::filter::Patterns;
use crate::ops::progress::Progress;
use crate::ops::{beneath, depth};
use crate::repository::{whoami, Repository};

/// What to back up and how to label it.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    /// Record the single entry of `paths` in the snapshot as this path,
    /// one component below the root (e.g. `/data`), instead of where it
    /// is: the node agent records a pod volume as `/<volume>` wherever the
    /// kubelet keeps it, so its snapshots and parents do not depend on the
    /// pod's UID. Parents are found by this path.
    pub as_path: Option<String>,
    /// Host name for the snapshot (defaults to this host).
    pub host: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Exclude patterns (restic syntax).
    pub excludes: Vec<String>,
    /// Parent snapshot; `None` picks the latest with the same host and paths.
    pub parent: Option<Id>,
    /// Do not use any parent (read every file).
    pub force: bool,
    /// Snapshot time (defaults to now).
    pub time: Option<DateTime<FixedOffset>>,
    /// Record real access times. Off by default, as in restic: reading a
    /// directory changes its atime, so recording it would make every
    /// directory look changed and store new trees on every run.
    pub with_atime: bool,
    /// Write no snapshot, and fail with [`Error::Unreadable`], when at
    /// least this fraction of the entries met (files and directories read
    /// plus those that failed) could not be read. `None` (restic's way)
    /// always writes the snapshot and lists the failures. The node agent
    /// sets it: a volume it cannot read must not yield an empty snapshot
    /// that passes for a backup.
    pub max_unreadable: Option<f64>,
    /// Descend into directories on other file systems (mount points inside
    /// the backed-up tree). Off by default: a volume's backup stays on that
    /// volume, and a pod that mounts something inside it (or a host path
    /// bind-mounted below it) does not get it read into the snapshot. The
    /// mount point itself is recorded as an empty directory, and reported.
    pub cross_mounts: bool,
    /// Names skipped directly below each target (prefixes), such as the
    /// restore-done marker the node agent leaves in a volume's root.
    pub skip_top: Vec<Vec<u8>>,
}

/// A file that could not be backed up.
#[derive(Debug, Clone)]
pub struct FileError {
    /// The path.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The outcome of a backup.
#[derive(Debug, Clone)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub snapshot_id: Id,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Files that were skipped because of errors.
    pub errors: Vec<FileError>,
}

/// Counters shared by the worker threads.
#[derive(Debug, Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    dirs_unmodified: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

/// Maps uids and gids to names once each.
#[derive(Debug, Default)]
struct NameCache {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl NameCache {
    fn user(&self, uid: u32) -> String {
        self.users
            .lock()
            .expect("user cache")
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default()
            })
            .clone()
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .lock()
            .expect("group cache")
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_default()
            })
            .clone()
    }
}

struct Archiver<'a> {
    repo: &'a Repository,
    progress: &'a Progress,
    with_atime: bool,
    cross_mounts: bool,
    skip_top: Vec<Vec<u8>>,
    excludes: Patterns,
    names: NameCache,
    counters: Counters,
    errors: Mutex<Vec<FileError>>,
    seed: u64,
}

/// The targets as a tree of path components.
#[derive(Debug, Default)]
struct Trie {
    children: BTreeMap<Vec<u8>, TrieNode>,
}

#[derive(Debug)]
enum TrieNode {
    Target(PathBuf),
    Inner(PathBuf, Trie),
}

fn time_of(secs: i64, nsec: i64) -> DateTime<FixedOffset> {
    chrono::Local
        .timestamp_opt(secs, nsec.clamp(0, 999_999_999) as u32)
        .single()
        .map(|t| t.fixed_offset())
        .unwrap_or_else(crate::format::repofile::gotime::zero)
}

/// Cleans an absolute path lexically (like Go's `filepath.Clean`).
fn clean_abs(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::local("resolve path", p, e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

fn build_trie(paths: &[PathBuf]) -> Result<(Trie, Vec<String>)> {
    let mut abs: Vec<PathBuf> = paths.iter().map(|p| clean_abs(p)).collect::<Result<_>>()?;
    abs.sort();
    abs.dedup();
    let mut trie = Trie::default();
    let mut shown = Vec::new();
    'paths: for p in &abs {
        shown.push(p.to_string_lossy().into_owned());
        let comps: Vec<&OsStr> = p.iter().skip(1).collect();
        if comps.is_empty() {
            return Err(Error::InvalidArgument(
                "backing up / itself is not supported; name the directories below it".into(),
            ));
        }
        let mut cur = &mut trie;
        let mut so_far = PathBuf::from("/");
        for (i, c) in comps.iter().enumerate() {
            so_far.push(c);
            let key = c.as_bytes().to_vec();
            if i + 1 == comps.len() {
                cur.children.insert(key, TrieNode::Target(so_far.clone()));
                continue 'paths;
            }
            let entry = cur
                .children
                .entry(key)
                .or_insert_with(|| TrieNode::Inner(so_far.clone(), Trie::default()));
            match entry {
                // A parent directory is itself a target: it covers this path.
                TrieNode::Target(_) => continue 'paths,
                TrieNode::Inner(_, t) => cur = t,
            }
        }
    }
    Ok((trie, shown))
}

/// The trie for one path recorded under another name (see
/// [`BackupOptions::as_path`]).
fn renamed_trie(paths: &[PathBuf], as_path: &str) -> Result<(Trie, Vec<String>)> {
    let [path] = paths else {
        return Err(Error::InvalidArgument(format!(
            "recording a backup as {as_path:?} needs exactly one path, not {}",
            paths.len()
        )));
    };
    let name = as_path
        .strip_prefix('/')
        .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cannot record a backup as {as_path:?}: give one name below the root, like /data"
            ))
        })?;
    let mut trie = Trie::default();
    trie.children
        .insert(name.as_bytes().to_vec(), TrieNode::Target(clean_abs(path)?));
    Ok((trie, vec![format!("/{name}")]))
}

impl Archiver<'_> {
    fn record_error(&self, path: &Path, message: String) {
        self.progress.add_error();
        tracing::warn!(path = %path.display(), %message, "skipping");
        self.errors.lock().expect("errors").push(FileError {
            path: path.to_path_buf(),
            message,
        });
    }

    /// The value of `r`, or `None` once its error is recorded against
    /// `path` as `what: error` (the entry is skipped).
    fn recorded<T>(&self, path: &Path, what: &str, r: std::io::Result<T>) -> Option<T> {
        r.map_err(|e| self.record_error(path, format!("{what}: {e}")))
            .ok()
    }

    /// Metadata from a `stat` as a tree node (without content, subtree,
    /// link target or xattrs).
    fn node_from_stat(&self, name: &[u8], st: &rustix::fs::Stat) -> Node {
        let st_mode = st.st_mode;
        let node_type = match st_mode & libc::S_IFMT {
            libc::S_IFREG => NodeType::File,
            libc::S_IFDIR => NodeType::Dir,
            libc::S_IFLNK => NodeType::Symlink,
            libc::S_IFBLK => NodeType::Dev,
            libc::S_IFCHR => NodeType::Chardev,
            libc::S_IFIFO => NodeType::Fifo,
            libc::S_IFSOCK => NodeType::Socket,
            _ => NodeType::Irregular,
        };
        let mut n = Node::new(name.to_vec(), node_type);
        n.mode = gomode::from_unix(st_mode);
        n.mtime = time_of(st.st_mtime, st.st_mtime_nsec as i64);
        n.atime = if self.with_atime {
            time_of(st.st_atime, st.st_atime_nsec as i64)
        } else {
            n.mtime
        };
        n.ctime = time_of(st.st_ctime, st.st_ctime_nsec as i64);
        n.uid = st.st_uid;
        n.gid = st.st_gid;
        n.user = self.names.user(st.st_uid);
        n.group = self.names.group(st.st_gid);
        n.inode = st.st_ino;
        n.device_id = st.st_dev;
        match node_type {
            NodeType::File => {
                n.size = st.st_size as u64;
                n.links = st.st_nlink;
            }
            NodeType::Symlink => n.links = st.st_nlink,
            NodeType::Dev | NodeType::Chardev => {
                n.device = st.st_rdev;
                n.links = st.st_nlink;
            }
            _ => {}
        }
        n
    }

    /// Stores the content of an open regular file; returns its blob list.
    fn save_file_content(&self, f: fs::File) -> Result<(Vec<Id>, u64), ContentError> {
        let size_hint = f.metadata().map(|m| m.len()).unwrap_or(0);
        save_content(self.repo, f, self.seed, size_hint, self.progress)
    }

    /// Backs up the entry `fs_name` of the open directory `dir` (recorded
    /// as `name`; `path` is for patterns and messages only, never opened);
    /// `None` when it is skipped. `dev` is the file system of `dir`.
    ///
    /// Everything is read through fds: the entry is looked at with
    /// `fstatat(AT_SYMLINK_NOFOLLOW)`, then opened with `O_NOFOLLOW` (and
    /// `O_DIRECTORY` for a directory) relative to `dir`, and what is stored
    /// is what `fstat` says of the opened fd. A pod that swaps the entry for
    /// a symlink between the two makes the open fail, so the entry is
    /// reported and skipped; it never leads us out of the tree.
    #[allow(clippy::too_many_arguments)]
    fn save_entry(
        &self,
        dir: BorrowedFd<'_>,
        dev: Option<u64>,
        path: &Path,
        fs_name: &[u8],
        name: &[u8],
        parent: Option<&Node>,
    ) -> Result<Option<Node>> {
        if self.progress.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if self.excludes.matches(path.as_os_str().as_bytes()) {
            return Ok(None);
        }
        let Some(st) = self.recorded(path, "stat", beneath::stat_at(dir, fs_name)) else {
            return Ok(None);
        };
        match beneath::kind(&st) {
            libc::S_IFDIR => {
                if depth::of_path(path) > depth::MAX_DEPTH {
                    self.record_error(path, depth::too_deep());
                    return Ok(None);
                }
                let Some(fd) =
                    self.recorded(path, "open directory", beneath::open_dir_at(dir, fs_name))
                else {
                    return Ok(None);
                };
                let Some(st) = self.recorded(path, "stat", beneath::stat_fd(fd.as_fd())) else {
                    return Ok(None);
                };
                let mut node = self.node_from_stat(name, &st);
                node.extended_attributes = xattrs(beneath::xattrs_fd(fd.as_fd()));
                let tree = if !self.cross_mounts && dev.is_some_and(|d| d != st.st_dev) {
                    self.record_error(
                        path,
                        "not crossing into another file system (a mount point); recorded as an empty directory (allow with cross-mounts)".into(),
                    );
                    drop(fd);
                    self.save_tree(Vec::new())?
                } else {
                    let parent_tree = parent
                        .filter(|p| p.node_type == NodeType::Dir)
                        .and_then(|p| p.subtree);
                    self.save_dir(fd, st.st_dev, path, parent_tree, dev.is_none())?
                };
                match parent.and_then(|p| p.subtree) {
                    None => self.counters.dirs_new.fetch_add(1, Ordering::Relaxed),
                    Some(t) if t == tree => self
                        .counters
                        .dirs_unmodified
                        .fetch_add(1, Ordering::Relaxed),
                    Some(_) => self.counters.dirs_changed.fetch_add(1, Ordering::Relaxed),
                };
                node.subtree = Some(tree);
                Ok(Some(node))
            }
            libc::S_IFREG => {
                let Some(fd) = self.recorded(path, "open", beneath::open_read_at(dir, fs_name))
                else {
                    return Ok(None);
                };
                let st = match beneath::stat_fd(fd.as_fd()) {
                    Ok(st) if beneath::kind(&st) == libc::S_IFREG => st,
                    Ok(_) => {
                        self.record_error(path, "changed type while being read".into());
                        return Ok(None);
                    }
                    Err(e) => {
                        self.record_error(path, format!("stat: {e}"));
                        return Ok(None);
                    }
                };
                let mut node = self.node_from_stat(name, &st);
                node.extended_attributes = xattrs(beneath::xattrs_fd(fd.as_fd()));
                self.save_file(fd, node, path, parent)
            }
            _ => {
                // Symlinks, FIFOs, devices, sockets: an O_PATH handle on the
                // entry itself, never opened for I/O.
                let Some(fd) = self.recorded(path, "open", beneath::open_path_at(dir, fs_name))
                else {
                    return Ok(None);
                };
                let Some(st) = self.recorded(path, "stat", beneath::stat_fd(fd.as_fd())) else {
                    return Ok(None);
                };
                if matches!(beneath::kind(&st), libc::S_IFDIR | libc::S_IFREG) {
                    self.record_error(path, "changed type while being read".into());
                    return Ok(None);
                }
                let mut node = self.node_from_stat(name, &st);
                if node.node_type == NodeType::Symlink {
                    // readlinkat on the O_PATH fd with an empty name reads
                    // the link we hold, not whatever the name is now.
                    match rustix::fs::readlinkat(fd.as_fd(), "", Vec::new()) {
                        Ok(t) => node.link_target = t.into_bytes(),
                        Err(e) => node.error = format!("readlink: {e}"),
                    }
                }
                node.extended_attributes = xattrs(beneath::xattrs_opath(fd.as_fd()));
                Ok(Some(node))
            }
        }
    }

    /// The content of a regular file (or its parent's, when unchanged).
    fn save_file(
        &self,
        fd: OwnedFd,
        mut node: Node,
        path: &Path,
        parent: Option<&Node>,
    ) -> Result<Option<Node>> {
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        if let Some(content) = parent.and_then(|p| self.unchanged_content(p, &node)) {
            self.counters
                .files_unmodified
                .fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(node.size, Ordering::Relaxed);
            self.progress.add_bytes(node.size);
            self.progress.add_file();
            node.content = Some(content);
            return Ok(Some(node));
        }
        match self.save_file_content(fs::File::from(fd)) {
            Ok((content, size)) => {
                // The size we read is what the content holds, even if
                // the file grew or shrank while we read it.
                node.size = size;
                self.counters.bytes.fetch_add(size, Ordering::Relaxed);
                self.progress.add_file();
                node.content = Some(content);
            }
            // The repository failed, not the file: stop.
            Err(ContentError::Repository(e)) => return Err(e),
            Err(ContentError::File(e)) => {
                self.record_error(path, format!("read: {e}"));
                return Ok(None);
            }
        }
        if parent.is_some_and(|p| p.node_type == NodeType::File) {
            self.counters.files_changed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.files_new.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(node))
    }

    /// The parent's content list when the file looks unchanged (size,
    /// mtime, ctime and inode equal) and all its blobs are still indexed.
    fn unchanged_content(&self, parent: &Node, node: &Node) -> Option<Vec<Id>> {
        if parent.node_type != NodeType::File
            || parent.size != node.size
            || parent.mtime != node.mtime
            || parent.ctime != node.ctime
            || parent.inode != node.inode
        {
            return None;
        }
        let content = parent.content.clone()?;
        let idx = self.repo.index();
        content
            .iter()
            .all(|id| idx.contains(BlobType::Data, id))
            .then_some(content)
    }

    fn parent_nodes(&self, parent_tree: Option<Id>) -> HashMap<Vec<u8>, Node> {
        let Some(id) = parent_tree else {
            return HashMap::new();
        };
        match self.repo.load_tree(&id) {
            Ok(t) => t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            Err(e) => {
                // A damaged parent only costs re-reading the files.
                tracing::warn!(tree = %id, error = %e, "cannot use parent tree");
                HashMap::new()
            }
        }
    }

    /// Backs up the open directory `dir` (on file system `dev`); `top`
    /// when it is a target itself.
    fn save_dir(
        &self,
        dir: OwnedFd,
        dev: u64,
        path: &Path,
        parent_tree: Option<Id>,
        top: bool,
    ) -> Result<Id> {
        let mut names = match beneath::list_names(dir.as_fd()) {
            Ok(n) => n,
            Err(e) => {
                self.record_error(path, format!("read directory: {e}"));
                Vec::new()
            }
        };
        if top {
            names.retain(|n| !self.skip_top.iter().any(|p| n.starts_with(p)));
        }
        names.sort();
        let parents = self.parent_nodes(parent_tree);
        let nodes: Vec<Option<Node>> = names
            .par_iter()
            .map(|name| {
                let p = path.join(OsStr::from_bytes(name));
                self.save_entry(dir.as_fd(), Some(dev), &p, name, name, parents.get(name))
            })
            .collect::<Result<_>>()?;
        self.save_tree(nodes.into_iter().flatten().collect())
    }

    fn save_tree(&self, nodes: Vec<Node>) -> Result<Id> {
        let mut tree = Tree { nodes };
        tree.sort_and_check()?;
        let (id, _) = self.repo.save_blob(BlobType::Tree, &tree.to_json())?;
        Ok(id)
    }

    fn save_trie(&self, trie: &Trie, parent_tree: Option<Id>) -> Result<Id> {
        let parents = self.parent_nodes(parent_tree);
        let mut nodes = Vec::new();
        for (name, child) in &trie.children {
            let parent = parents.get(name);
            match child {
                TrieNode::Target(path) => {
                    // The target's parent is the one directory opened by
                    // path (chosen by the user or the agent); from there on
                    // everything goes through fds.
                    let parent_dir = path.parent().unwrap_or(Path::new("/"));
                    let fs_name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
                    let dfd = match beneath::open_dir_path(parent_dir) {
                        Ok(fd) => fd,
                        Err(e) => {
                            self.record_error(path, format!("open parent directory: {e}"));
                            continue;
                        }
                    };
                    if let Some(n) =
                        self.save_entry(dfd.as_fd(), None, path, fs_name, name, parent)?
                    {
                        nodes.push(n);
                    }
                }
                TrieNode::Inner(path, sub) => {
                    let st = match rustix::fs::lstat(path) {
                        Ok(st) => st,
                        Err(e) => {
                            self.record_error(path, format!("stat: {e}"));
                            continue;
                        }
                    };
                    let mut node = self.node_from_stat(name, &st);
                    if let Ok(fd) = beneath::open_dir_path(path) {
                        node.extended_attributes = xattrs(beneath::xattrs_fd(fd.as_fd()));
                    }
                    if node.node_type != NodeType::Dir {
                        node = Node::new(name.clone(), NodeType::Dir);
                        node.mode = gomode::DIR | 0o755;
                    }
                    node.subtree = Some(self.save_trie(sub, parent.and_then(|p| p.subtree))?);
                    nodes.push(node);
                }
            }
        }
        self.save_tree(nodes)
    }
}

/// Stores what `reader` yields as data blobs; returns the blob list and
/// the size. One reader cuts blocks of the stream into chunks; the chunks
/// of a block are hashed, compressed and encrypted in parallel, straight
/// from the block buffer, so memory is bounded by the block size whatever
/// the stream's length. `size_hint` (a file's size) keeps the buffer small
/// for small files.
pub(crate) fn save_content<R: std::io::Read>(
    repo: &Repository,
    reader: R,
    seed: u64,
    size_hint: u64,
    progress: &Progress,
) -> Result<(Vec<Id>, u64), ContentError> {
    let mut content = Vec::new();
    let mut size = 0u64;
    let params = repo.config().chunker();
    let mut chunker = BlockChunker::new(reader, &params, seed, size_hint);
    while let Some((block, cuts)) = chunker.next_block().map_err(ContentError::File)? {
        let save = |&(off, len): &(usize, usize)| {
            let data = &block[off..off + len];
            let r = repo.save_blob(BlobType::Data, data).map(|(id, _)| id);
            progress.add_bytes(len as u64);
            r
        };
        let ids: Vec<Result<Id>> = if cuts.len() == 1 {
            vec![save(&cuts[0])]
        } else {
            cuts.par_iter().map(save).collect()
        };
        for id in ids {
            content.push(id.map_err(ContentError::Repository)?);
        }
        size += block.len() as u64;
    }
    Ok((content, size))
}

/// Why a file's content could not be stored.
pub(crate) enum ContentError {
    /// Reading the file failed: skip the file.
    File(std::io::Error),
    /// Writing to the repository failed: stop the backup.
    Repository(Error),
}

fn xattrs(list: Vec<(String, Vec<u8>)>) -> Vec<ExtendedAttribute> {
    list.into_iter()
        .map(|(name, value)| ExtendedAttribute { name, value })
        .collect()
}

/// Finds the latest snapshot with the same host and paths. A snapshot file
/// that cannot be read (damaged, or crafted to fail) is skipped with a
/// warning: the parent only saves reading unchanged files again, so a
/// poison snapshot must not stop every backup into the repository.
pub fn find_parent(
    repo: &Repository,
    host: &str,
    paths: &[String],
) -> Result<Option<(Id, Snapshot)>> {
    let mut want: Vec<&String> = paths.iter().collect();
    want.sort();
    let all = repo.snapshots_readable()?;
    for (id, e) in &all.unreadable {
        tracing::warn!(snapshot = %id, error = %e, "skipping a snapshot that cannot be read while looking for the parent");
    }
    Ok(all.snapshots.into_iter().rev().find(|(_, s)| {
        let mut have: Vec<&String> = s.paths.iter().collect();
        have.sort();
        s.hostname == host && have == want
    }))
}

/// Backs up `opts.paths` into `repo` and writes a snapshot.
/// The repository's index must be loaded.
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupResult> {
    backup_with_progress(repo, opts, &Progress::default())
}

/// Counts what a backup will read (files and bytes), for the progress
/// totals, in a thread of its own; it stops when `stop` is set.
fn scan(targets: &[PathBuf], excludes: &Patterns, progress: &Progress, stop: &AtomicBool) {
    for t in targets {
        let walk = walkdir::WalkDir::new(t)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| !excludes.matches(e.path().as_os_str().as_bytes()));
        for e in walk.flatten() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if e.file_type().is_file() {
                progress.files_total.fetch_add(1, Ordering::Relaxed);
                if let Ok(md) = e.metadata() {
                    progress.bytes_total.fetch_add(md.len(), Ordering::Relaxed);
                }
            }
        }
    }
    progress.scan_done.store(true, Ordering::Relaxed);
}

/// [`backup`], reporting live progress into `progress`.
pub fn backup_with_progress(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupResult> {
    if opts.paths.is_empty() {
        return Err(Error::InvalidArgument(
            "nothing to back up: give at least one path".into(),
        ));
    }
    for p in &opts.paths {
        if let Err(e) = fs::symlink_metadata(p) {
            return Err(Error::local("stat", p, e));
        }
    }
    let start = chrono::Local::now().fixed_offset();
    let (user, this_host) = whoami();
    let host = opts.host.clone().unwrap_or(this_host);
    let (trie, shown_paths) = match &opts.as_path {
        None => build_trie(&opts.paths)?,
        Some(as_path) => renamed_trie(&opts.paths, as_path)?,
    };
    let excludes = Patterns::new(&opts.excludes).map_err(Error::InvalidArgument)?;
    let parent = if opts.force {
        None
    } else if let Some(p) = opts.parent {
        Some((p, repo.load_snapshot(&p)?))
    } else {
        find_parent(repo, &host, &shown_paths)?
    };
    if let Some((pid, _)) = &parent {
        tracing::info!(parent = %pid, "using parent snapshot");
    }
    let a = Archiver {
        repo,
        progress,
        with_atime: opts.with_atime,
        cross_mounts: opts.cross_mounts,
        skip_top: opts.skip_top.clone(),
        excludes,
        names: NameCache::default(),
        counters: Counters::default(),
        errors: Mutex::new(Vec::new()),
        seed: repo.key().chunker_seed(),
    };
    let before = repo.write_stats();
    let stop_scan = AtomicBool::new(false);
    let tree = std::thread::scope(|scope| {
        let scan_excludes = a.excludes.clone();
        let targets: Vec<PathBuf> = opts
            .paths
            .iter()
            .map(|p| clean_abs(p))
            .collect::<Result<_>>()?;
        let stop = &stop_scan;
        scope.spawn(move || scan(&targets, &scan_excludes, progress, stop));
        // The archiver recurses once per directory level, through rayon:
        // on threads whose stack holds depth::MAX_DEPTH levels.
        let parent_tree = parent.as_ref().map(|(_, s)| s.tree);
        let r = match depth::pool(rayon::current_num_threads()) {
            Ok(pool) => pool.install(|| a.save_trie(&trie, parent_tree)),
            Err(e) => Err(Error::InvalidArgument(format!(
                "cannot start the walker threads: {e}"
            ))),
        };
        stop_scan.store(true, Ordering::Relaxed);
        r
    })?;
    // Packs and index first, then the snapshot that refers to them.
    repo.flush()?;
    let after = repo.write_stats();
    let c = &a.counters;
    let ld = |x: &AtomicU64| x.load(Ordering::Relaxed);
    let summary = SnapshotSummary {
        backup_start: start,
        backup_end: chrono::Local::now().fixed_offset(),
        files_new: ld(&c.files_new),
        files_changed: ld(&c.files_changed),
        files_unmodified: ld(&c.files_unmodified),
        dirs_new: ld(&c.dirs_new),
        dirs_changed: ld(&c.dirs_changed),
        dirs_unmodified: ld(&c.dirs_unmodified),
        data_blobs: after.data_blobs - before.data_blobs,
        tree_blobs: after.tree_blobs - before.tree_blobs,
        data_added: after.data_added - before.data_added,
        data_added_packed: after.data_added_packed - before.data_added_packed,
        total_files_processed: ld(&c.files),
        total_bytes_processed: ld(&c.bytes),
    };
    let snapshot = Snapshot {
        time: opts.time.unwrap_or(start),
        parent: parent.map(|(id, _)| id),
        tree,
        paths: shown_paths,
        hostname: host,
        username: user,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        excludes: opts.excludes.clone(),
        tags: opts.tags.clone(),
        original: None,
        program_version: format!("stash {}", env!("CARGO_PKG_VERSION")),
        summary: Some(summary),
    };
    // A cancel that came while the packs and index were written (a lost
    // claim, a lost lock) still stops the snapshot: without it the uploaded
    // data is only unreferenced packs the next backup reuses.
    if progress.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let errors = a.errors.into_inner().expect("errors");
    if let Some(max) = opts.max_unreadable {
        // Files that failed to read are counted as processed too.
        let bad = errors.len() as u64;
        let read = (ld(&c.files) + ld(&c.dirs_new) + ld(&c.dirs_changed) + ld(&c.dirs_unmodified))
            .saturating_sub(bad);
        if bad > 0 && bad as f64 >= max * (read + bad) as f64 {
            let first = &errors[0];
            return Err(Error::Unreadable {
                unreadable: bad,
                read,
                first: format!("{}: {}", first.path.display(), first.message),
            });
        }
    }
    let snapshot_id = repo.save_unpacked(crate::FileType::Snapshot, &snapshot.to_json())?;
    tracing::info!(snapshot = %snapshot_id, errors = errors.len(), "backup done");
    Ok(BackupResult {
        snapshot_id,
        snapshot,
        errors,
    })
}
