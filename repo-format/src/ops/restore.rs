//! Restore: recreate a snapshot's tree below a target directory.
//!
//! It runs in three steps. First the tree is walked: directories, symlinks,
//! FIFOs and devices are made, every regular file is created at its final
//! size (a sparse file: holes read as zeros), and a plan records which blob
//! goes to which file offsets, grouped by pack. Then the packs are read in
//! parallel, each once: every blob is decrypted, verified and written at all
//! of its offsets; blobs of zeros are not written, so zero runs stay holes.
//! Last, metadata is applied: files first, then directories deepest first,
//! so a directory's times are set after its children are complete.
//!
//! Safety comes first. Every name from the repository is checked (no empty
//! names, `.`, `..`, `/` or NUL; trees with duplicate names are refused when
//! parsed). The target is opened once, by path; below it every create,
//! write, chown, chmod, utimes, xattr and unlink is one name relative to a
//! directory fd that was itself opened with `O_DIRECTORY|O_NOFOLLOW` (see
//! [`crate::ops::beneath`]), files are written only through fds whose inode
//! is the one this restore created, and metadata is applied to fds, not
//! names. A running pod that swaps a directory for a symlink mid-restore
//! makes our next open fail (reported) instead of leading it out of the
//! target. Content that gives privileges (device nodes, setuid/setgid bits,
//! file capabilities, `security.*`/`trusted.*` xattrs) is restored only
//! when [`RestoreOptions::privileged`] allows it, otherwise skipped and
//! reported in [`RestoreResult::skipped`]. A damaged blob costs only the
//! files that hold it: they are removed rather than left with wrong content,
//! the rest is restored (metadata included), the damage is reported, and the
//! caller exits non-zero.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::repofile::tree::gomode;
use crate::format::repofile::{BlobType, Node, NodeType};
use crate::ops::filter::Patterns;
use crate::ops::progress::Progress;
use crate::ops::{beneath, depth};
use crate::repository::index::BlobLocation;
use crate::repository::Repository;

/// What to do with a file that already exists where a restore puts one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Replace it.
    #[default]
    Always,
    /// Leave it when size and mtime match the snapshot; otherwise rewrite
    /// only the parts whose content differs.
    IfChanged,
    /// Replace it only when the snapshot's copy has a later modification
    /// time (restic's `if-newer`).
    IfNewer,
    /// Leave it.
    Never,
}

impl FromStr for Overwrite {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(Overwrite::Always),
            "if-changed" => Ok(Overwrite::IfChanged),
            "if-newer" => Ok(Overwrite::IfNewer),
            "never" => Ok(Overwrite::Never),
            _ => Err(format!(
                "overwrite {s:?}: use always, if-changed, if-newer or never"
            )),
        }
    }
}

/// What to restore and where.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Restore only paths matching these patterns (and their parents).
    pub includes: Vec<String>,
    /// Skip paths matching these patterns.
    pub excludes: Vec<String>,
    /// Existing files.
    pub overwrite: Overwrite,
    /// Remove files and directories in the restored directories that the
    /// snapshot does not have.
    pub delete: bool,
    /// Read every restored file back and check it against the snapshot.
    pub verify: bool,
    /// Packs read at once (0: two per CPU).
    pub threads: usize,
    /// Which privilege-giving content is restored (none by default).
    pub privileged: Privileged,
    /// Names not restored directly below the target (prefixes), such as
    /// the node agent's restore-done marker: a snapshot cannot plant one.
    pub skip_top: Vec<Vec<u8>>,
}

/// Content that gives privileges on the node, restored only when allowed:
/// the snapshot is the tenant's to write, and a root restore would
/// otherwise create whatever it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Privileged {
    /// Block and character device nodes.
    pub devices: bool,
    /// The setuid and setgid bits (the file is restored without them).
    pub setid: bool,
    /// File capabilities (the `security.capability` xattr).
    pub capabilities: bool,
    /// Other `security.*` and all `trusted.*` xattrs (SELinux labels,
    /// IMA/EVM, overlayfs metadata...).
    pub security_xattrs: bool,
}

impl Privileged {
    /// Everything, as restic restores it.
    pub fn all() -> Privileged {
        Privileged {
            devices: true,
            setid: true,
            capabilities: true,
            security_xattrs: true,
        }
    }

    /// What both allow.
    pub fn and(self, other: Privileged) -> Privileged {
        Privileged {
            devices: self.devices && other.devices,
            setid: self.setid && other.setid,
            capabilities: self.capabilities && other.capabilities,
            security_xattrs: self.security_xattrs && other.security_xattrs,
        }
    }

    /// What `self` asks for beyond `allowed`, by name.
    pub fn beyond(self, allowed: Privileged) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (want, ok, name) in [
            (self.devices, allowed.devices, "devices"),
            (self.setid, allowed.setid, "setid"),
            (self.capabilities, allowed.capabilities, "capabilities"),
            (
                self.security_xattrs,
                allowed.security_xattrs,
                "security-xattrs",
            ),
        ] {
            if want && !ok {
                v.push(name);
            }
        }
        v
    }

    /// Whether the xattr `name` may be restored.
    fn xattr_allowed(&self, name: &str) -> bool {
        if name == "security.capability" {
            self.capabilities
        } else if name.starts_with("security.") || name.starts_with("trusted.") {
            self.security_xattrs
        } else {
            true
        }
    }
}

impl FromStr for Privileged {
    type Err = String;
    /// A comma-separated list of `devices`, `setid`, `capabilities`,
    /// `security-xattrs`, or `all` / `none`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut p = Privileged::default();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "all" => p = Privileged::all(),
                "none" => p = Privileged::default(),
                "devices" => p.devices = true,
                "setid" => p.setid = true,
                "capabilities" => p.capabilities = true,
                "security-xattrs" => p.security_xattrs = true,
                _ => {
                    return Err(format!(
                        "{w:?}: use devices, setid, capabilities, security-xattrs, all or none"
                    ))
                }
            }
        }
        Ok(p)
    }
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
    /// Regular files restored (including ones left unchanged).
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries (symlinks, FIFOs, devices).
    pub others: u64,
    /// Bytes of file content in the restored files.
    pub bytes: u64,
    /// Bytes actually written (zero runs and unchanged parts are skipped).
    pub bytes_written: u64,
    /// Existing files left as they were (`never`, or unchanged `if-changed`).
    pub files_skipped: u64,
    /// Entries removed by `delete`.
    pub deleted: u64,
    /// What could not be restored.
    pub errors: Vec<RestoreError>,
    /// What was left out on purpose (privileged content not allowed,
    /// reserved names): restored without it, reported, not an error.
    pub skipped: Vec<RestoreError>,
}

/// How a planned file is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// A new, empty, sparse file: write non-zero blobs only.
    Fresh,
    /// An existing file: write only blobs whose bytes differ.
    Compare,
}

/// An open directory of the target, shared by what is restored into it.
type DirFd = Arc<OwnedFd>;

/// A regular file whose content is being written.
#[derive(Debug)]
struct PlannedFile {
    /// Its directory and name there: every open is relative to that fd.
    dir: DirFd,
    name: Vec<u8>,
    /// For messages only.
    path: PathBuf,
    snap_path: Vec<u8>,
    node: Node,
    fill: Fill,
    /// (device, inode) of the file this restore created or chose: an fd
    /// that leads elsewhere (the name was replaced meanwhile) is not used.
    inode: (u64, u64),
    /// Other names of the same inode (hard links made to it).
    links: Mutex<Vec<(DirFd, Vec<u8>)>>,
    /// Blob writes still to do; the file is complete at zero.
    remaining: AtomicU64,
    damaged: Mutex<Option<String>>,
}

impl PlannedFile {
    /// Opens the file again through its directory fd, and insists it is
    /// still the inode we created.
    fn open(&self, write: bool) -> std::io::Result<fs::File> {
        let fd = if write {
            beneath::open_write_at(self.dir.as_fd(), &self.name, self.fill == Fill::Compare)?
        } else {
            beneath::open_read_at(self.dir.as_fd(), &self.name)?
        };
        let st = beneath::stat_fd(fd.as_fd())?;
        if !beneath::same_inode(&st, self.inode.0, self.inode.1) {
            return Err(std::io::Error::other(
                "the file was replaced while being restored",
            ));
        }
        Ok(fs::File::from(fd))
    }
}

/// One blob and everywhere it goes.
#[derive(Debug)]
struct BlobTargets {
    id: Id,
    loc: BlobLocation,
    /// (file index, offset).
    writes: Vec<(u32, u64)>,
}

/// A restored directory, for its metadata last.
struct PlannedDir {
    fd: DirFd,
    path: PathBuf,
    snap_path: Vec<u8>,
    node: Node,
}

struct Planner<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    includes: Patterns,
    excludes: Patterns,
    /// (device, inode) of hard-linked files → index in `files` (or a name,
    /// for files restored without content plan).
    hardlinks: HashMap<(u64, u64), Link>,
    files: Vec<PlannedFile>,
    /// pack → blob → targets.
    packs: HashMap<Id, HashMap<Id, BlobTargets>>,
    /// Directories in creation order, for metadata last.
    dirs: Vec<PlannedDir>,
    result: RestoreResult,
}

#[derive(Debug, Clone)]
enum Link {
    Planned(u32),
    Done(DirFd, Vec<u8>),
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

impl Planner<'_> {
    fn fail(&mut self, snap_path: &[u8], message: String) {
        tracing::warn!(path = %lossy(snap_path), %message, "restore error");
        self.result.errors.push(RestoreError {
            path: lossy(snap_path),
            message,
        });
    }

    fn skip(&mut self, snap_path: &[u8], message: String) {
        tracing::warn!(path = %lossy(snap_path), %message, "not restored");
        self.result.skipped.push(RestoreError {
            path: lossy(snap_path),
            message,
        });
    }

    fn selected(&self, snap_path: &[u8]) -> bool {
        !self.excludes.matches(snap_path)
            && (self.includes.is_empty() || self.includes.matches(snap_path))
    }

    /// Walks a tree into the open directory `dir` (at `path`, for
    /// messages); returns whether anything was restored.
    fn walk(&mut self, tree_id: &Id, dir: &DirFd, path: &Path, snap_dir: &[u8]) -> Result<bool> {
        let tree = match self.repo.load_tree(tree_id) {
            Ok(t) => t,
            Err(e) if is_damage(&e) => {
                self.fail(snap_dir, format!("cannot load tree {tree_id}: {e}"));
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if self.opts.delete {
            self.delete_extra(&tree.nodes, dir.as_fd(), snap_dir);
        }
        let top = snap_dir == b"/";
        let mut any = false;
        for node in tree.nodes {
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
            if top && self.opts.skip_top.iter().any(|p| node.name.starts_with(p)) {
                self.skip(
                    &snap_path,
                    "a name reserved for the restore's own marker".into(),
                );
                continue;
            }
            if self.excludes.matches(&snap_path) {
                continue;
            }
            let child = path.join(OsStr::from_bytes(&node.name));
            if node.node_type == NodeType::Dir {
                any |= self.walk_dir(node, dir, &child, snap_path)?;
            } else if self.selected(&snap_path) {
                any |= self.leaf(node, dir, &child, snap_path);
            }
        }
        Ok(any)
    }

    /// `--delete`: removes what is in `dir` but not in the snapshot's tree
    /// (only entries the filters select).
    fn delete_extra(&mut self, nodes: &[Node], dir: BorrowedFd<'_>, snap_dir: &[u8]) {
        let Ok(names) = beneath::list_names(dir) else {
            return;
        };
        let wanted: std::collections::HashSet<&[u8]> =
            nodes.iter().map(|n| n.name.as_slice()).collect();
        for name in names {
            if wanted.contains(name.as_slice()) {
                continue;
            }
            let snap_path = join_snap(snap_dir, &name);
            if !self.selected(&snap_path) {
                continue;
            }
            match beneath::remove_all_at(dir, &name) {
                Ok(()) => self.result.deleted += 1,
                Err(err) => self.fail(&snap_path, format!("delete: {err}")),
            }
        }
    }

    fn walk_dir(
        &mut self,
        node: Node,
        parent: &DirFd,
        path: &Path,
        snap_path: Vec<u8>,
    ) -> Result<bool> {
        let selected = self.selected(&snap_path);
        if !selected && !self.includes.may_match_below(&snap_path) {
            return Ok(false);
        }
        let Some(subtree) = node.subtree else {
            self.fail(
                &snap_path,
                "directory without subtree in the snapshot".into(),
            );
            return Ok(false);
        };
        if depth::of_snapshot_path(&snap_path) > depth::MAX_DEPTH {
            self.fail(&snap_path, depth::too_deep());
            return Ok(false);
        }
        let (fd, created) = match prepare_dir(parent.as_fd(), &node.name) {
            Ok(c) => c,
            Err(e) => {
                self.fail(
                    &snap_path,
                    format!("create directory {}: {e}", path.display()),
                );
                return Ok(false);
            }
        };
        let fd = Arc::new(fd);
        let name = node.name.clone();
        let slot = self.dirs.len();
        self.dirs.push(PlannedDir {
            fd: fd.clone(),
            path: path.to_path_buf(),
            snap_path: snap_path.clone(),
            node,
        });
        let any = self.walk(&subtree, &fd, path, &snap_path)?;
        if !selected && !any {
            self.dirs.remove(slot);
            if created {
                let _ = beneath::rmdir_at(parent.as_fd(), &name);
            }
            return Ok(false);
        }
        self.result.dirs += 1;
        Ok(true)
    }

    fn leaf(&mut self, node: Node, dir: &DirFd, path: &Path, snap_path: Vec<u8>) -> bool {
        if node.node_type == NodeType::File {
            return self.file(node, dir, path, snap_path);
        }
        let d = dir.as_fd();
        let ifmt = match node.node_type {
            NodeType::Symlink => libc::S_IFLNK,
            NodeType::Fifo => libc::S_IFIFO,
            NodeType::Dev | NodeType::Chardev if !self.opts.privileged.devices => {
                self.skip(
                    &snap_path,
                    format!(
                        "device node ({}) not restored: devices are not allowed for this restore",
                        node.node_type.as_str()
                    ),
                );
                return false;
            }
            NodeType::Dev => libc::S_IFBLK,
            NodeType::Chardev => libc::S_IFCHR,
            // Sockets belong to a running process; restic skips them too.
            NodeType::Socket => return false,
            _ => {
                self.fail(
                    &snap_path,
                    format!("cannot restore a node of type {}", node.node_type.as_str()),
                );
                return false;
            }
        };
        if let Err(e) = remove_non_dir(d, &node.name) {
            self.fail(
                &snap_path,
                format!("remove existing {}: {e}", path.display()),
            );
            return false;
        }
        let res = match ifmt {
            libc::S_IFLNK => beneath::symlink_at(&node.link_target, d, &node.name),
            _ => beneath::mknod_at(d, &node.name, ifmt, node.device),
        };
        if let Err(e) = res {
            self.fail(&snap_path, format!("create {}: {e}", path.display()));
            return false;
        }
        self.result.others += 1;
        let mut skipped = Vec::new();
        if let Err(m) = apply_at(d, &node, ifmt, &self.opts.privileged, &mut skipped) {
            self.fail(&snap_path, m);
        }
        for m in skipped {
            self.skip(&snap_path, m);
        }
        true
    }

    fn file(&mut self, node: Node, dir: &DirFd, path: &Path, snap_path: Vec<u8>) -> bool {
        let d = dir.as_fd();
        let link_key = (node.links > 1).then_some((node.device_id, node.inode));
        let existing = beneath::stat_at(d, &node.name).ok();
        let is_regular = existing
            .as_ref()
            .is_some_and(|st| beneath::kind(st) == libc::S_IFREG);
        if is_regular {
            let st = existing.as_ref().expect("exists");
            let unchanged = st.st_size as u64 == node.size
                && st.st_mtime as i64 == node.mtime.timestamp()
                && st.st_mtime_nsec as i64 == i64::from(node.mtime.timestamp_subsec_nanos());
            let snapshot_newer = (node.mtime.timestamp(), node.mtime.timestamp_subsec_nanos())
                > (
                    st.st_mtime as i64,
                    u32::try_from(st.st_mtime_nsec).unwrap_or(0),
                );
            match self.opts.overwrite {
                Overwrite::Never => {
                    self.result.files_skipped += 1;
                    return false;
                }
                Overwrite::IfNewer if !snapshot_newer => {
                    self.result.files_skipped += 1;
                    return false;
                }
                Overwrite::IfChanged if unchanged => {
                    if let Some(k) = link_key {
                        self.hardlinks
                            .entry(k)
                            .or_insert_with(|| Link::Done(dir.clone(), node.name.clone()));
                    }
                    self.result.files_skipped += 1;
                    self.result.files += 1;
                    self.result.bytes += node.size;
                    return true;
                }
                _ => {}
            }
        }
        // Hard links: later names link to the first one restored (never to
        // anything this restore did not make itself).
        if let Some(k) = link_key {
            if let Some(first) = self.hardlinks.get(&k).cloned() {
                if let Err(e) = remove_non_dir(d, &node.name) {
                    self.fail(
                        &snap_path,
                        format!("remove existing {}: {e}", path.display()),
                    );
                    return false;
                }
                let (from_dir, from_name, from_path) = match &first {
                    Link::Planned(i) => {
                        let f = &self.files[*i as usize];
                        (f.dir.clone(), f.name.clone(), f.path.clone())
                    }
                    Link::Done(d, n) => (d.clone(), n.clone(), PathBuf::from(lossy(n))),
                };
                return match beneath::link_at(from_dir.as_fd(), &from_name, d, &node.name) {
                    Ok(()) => {
                        if let Link::Planned(i) = first {
                            self.files[i as usize]
                                .links
                                .lock()
                                .expect("links")
                                .push((dir.clone(), node.name.clone()));
                        }
                        self.result.files += 1;
                        true
                    }
                    Err(e) => {
                        self.fail(
                            &snap_path,
                            format!("hard link to {}: {e}", from_path.display()),
                        );
                        false
                    }
                };
            }
        }
        let fill = if is_regular && self.opts.overwrite == Overwrite::IfChanged {
            Fill::Compare
        } else {
            if let Err(e) = remove_non_dir(d, &node.name) {
                self.fail(
                    &snap_path,
                    format!("remove existing {}: {e}", path.display()),
                );
                return false;
            }
            Fill::Fresh
        };
        // Locate every blob first: a file whose blobs are not all indexed is
        // not created at all.
        let empty = Vec::new();
        let content = node.content.as_ref().unwrap_or(&empty);
        let mut placed = Vec::with_capacity(content.len());
        let mut offset = 0u64;
        for (i, id) in content.iter().enumerate() {
            match self.repo.blob_location(BlobType::Data, id) {
                Some(loc) => {
                    placed.push((*id, loc, offset));
                    offset += loc.data_length();
                }
                None => {
                    self.fail(
                        &snap_path,
                        format!("not restored: data blob {i} ({id}) is not in the index"),
                    );
                    return false;
                }
            }
        }
        let open = match fill {
            Fill::Fresh => beneath::create_file_at(d, &node.name),
            Fill::Compare => beneath::open_write_at(d, &node.name, true),
        };
        // The final size up front: what is never written reads as zeros.
        let inode = open.and_then(|fd| {
            let st = beneath::stat_fd(fd.as_fd())?;
            if beneath::kind(&st) != libc::S_IFREG {
                return Err(std::io::Error::other("not a regular file"));
            }
            fs::File::from(fd).set_len(offset)?;
            Ok((st.st_dev, st.st_ino))
        });
        let inode = match inode {
            Ok(i) => i,
            Err(e) => {
                self.fail(&snap_path, format!("create {}: {e}", path.display()));
                return false;
            }
        };
        let idx = self.files.len() as u32;
        for (id, loc, off) in placed.iter() {
            self.packs
                .entry(loc.pack)
                .or_default()
                .entry(*id)
                .or_insert_with(|| BlobTargets {
                    id: *id,
                    loc: *loc,
                    writes: Vec::new(),
                })
                .writes
                .push((idx, *off));
        }
        if let Some(k) = link_key {
            self.hardlinks.insert(k, Link::Planned(idx));
        }
        self.result.files += 1;
        self.result.bytes += offset;
        self.files.push(PlannedFile {
            dir: dir.clone(),
            name: node.name.clone(),
            path: path.to_path_buf(),
            snap_path,
            node,
            fill,
            inode,
            links: Mutex::new(Vec::new()),
            remaining: AtomicU64::new(placed.len() as u64),
            damaged: Mutex::new(None),
        });
        true
    }
}

/// Reads packs in parallel and writes their blobs into the planned files.
fn fill_files(
    repo: &Repository,
    files: &[PlannedFile],
    packs: HashMap<Id, HashMap<Id, BlobTargets>>,
    threads: usize,
    progress: &Progress,
) -> u64 {
    let written = AtomicU64::new(0);
    let mut work: Vec<(Id, Vec<BlobTargets>)> = packs
        .into_iter()
        .map(|(p, blobs)| {
            let mut v: Vec<BlobTargets> = blobs.into_values().collect();
            v.sort_by_key(|b| b.loc.offset);
            (p, v)
        })
        .collect();
    work.sort_by_key(|w| w.0);
    let damage = |b: &BlobTargets, msg: String| {
        for (fi, off) in &b.writes {
            let f = &files[*fi as usize];
            let mut d = f.damaged.lock().expect("damaged");
            if d.is_none() {
                *d = Some(format!(
                    "not restored: data blob {} at file offset {off}: {msg}",
                    b.id
                ));
            }
        }
    };
    let run = || {
        work.par_iter().for_each(|(pack, blobs)| {
            // Blobs close together are read in one request of up to 4 MiB:
            // few requests, and a bounded buffer per thread.
            let mut i = 0;
            while i < blobs.len() {
                // A cancelled restore (timed out, deleted, taken over)
                // stops writing at once.
                if progress.is_cancelled() {
                    return;
                }
                let start = blobs[i].loc.offset;
                let mut j = i + 1;
                let mut end = start + blobs[i].loc.length;
                while j < blobs.len()
                    && blobs[j].loc.offset + blobs[j].loc.length - start <= READ_MAX
                    && blobs[j].loc.offset <= end + READ_GAP
                {
                    end = end.max(blobs[j].loc.offset + blobs[j].loc.length);
                    j += 1;
                }
                let buf = repo
                    .backend()
                    .read_range(
                        FileType::Pack,
                        &pack.to_hex(),
                        u64::from(start),
                        end - start,
                    )
                    .map_err(|e| e.to_string());
                for b in &blobs[i..j] {
                    let data = buf.as_ref().map_err(Clone::clone).and_then(|buf| {
                        let s = (b.loc.offset - start) as usize;
                        repo.decode_blob(
                            BlobType::Data,
                            &b.id,
                            &b.loc,
                            &buf[s..s + b.loc.length as usize],
                        )
                        .map_err(|e| e.to_string())
                    });
                    let data = match data {
                        Ok(d) => d,
                        Err(msg) => {
                            damage(b, msg);
                            for (fi, _) in &b.writes {
                                files[*fi as usize]
                                    .remaining
                                    .fetch_sub(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                    };
                    let zero = data.iter().all(|&x| x == 0);
                    for (fi, off) in &b.writes {
                        let f = &files[*fi as usize];
                        if f.damaged.lock().expect("damaged").is_none() {
                            match write_blob(f, *off, &data, zero) {
                                Ok(n) => {
                                    written.fetch_add(n, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    let mut d = f.damaged.lock().expect("damaged");
                                    if d.is_none() {
                                        *d = Some(format!("write {}: {e}", f.path.display()));
                                    }
                                }
                            }
                        }
                        progress.add_bytes(data.len() as u64);
                        if f.remaining.fetch_sub(1, Ordering::Relaxed) == 1 {
                            progress.add_file();
                        }
                    }
                }
                i = j;
            }
        });
    };
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    }
    written.into_inner()
}

/// Largest single read from a pack during restore.
const READ_MAX: u32 = 4 << 20;
/// Blobs this close together are read in one request (the gap is read and dropped).
const READ_GAP: u32 = 256 << 10;

/// Writes one blob into a file; returns the bytes written. Into a fresh
/// (sparse) file, runs of zeros covering whole 4 KiB blocks are skipped, so
/// they stay holes.
fn write_blob(f: &PlannedFile, off: u64, data: &[u8], zero: bool) -> std::io::Result<u64> {
    if f.fill == Fill::Fresh && zero {
        return Ok(0); // a hole already reads as zeros
    }
    let file = f.open(true)?;
    if f.fill == Fill::Compare {
        let mut existing = vec![0u8; data.len()];
        if file.read_exact_at(&mut existing, off).is_ok() && existing == data {
            return Ok(0);
        }
        file.write_all_at(data, off)?;
        return Ok(data.len() as u64);
    }
    let mut written = 0u64;
    for (start, end) in non_zero_runs(off, data) {
        file.write_all_at(&data[start..end], off + start as u64)?;
        written += (end - start) as u64;
    }
    Ok(written)
}

/// The parts of `data` (placed at file offset `off`) that are not whole
/// zero-filled 4 KiB file blocks, as `(start, end)` ranges in `data`.
fn non_zero_runs(off: u64, data: &[u8]) -> Vec<(usize, usize)> {
    const BLOCK: u64 = 4096;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        // Up to the next file block boundary.
        let abs = off + pos as u64;
        let end = (pos + (BLOCK - abs % BLOCK) as usize).min(data.len());
        let piece = &data[pos..end];
        let whole_block = piece.len() as u64 == BLOCK;
        if !(whole_block && piece.iter().all(|&b| b == 0)) {
            match runs.last_mut() {
                Some(r) if r.1 == pos => r.1 = end,
                _ => runs.push((pos, end)),
            }
        }
        pos = end;
    }
    runs
}

/// Reads a restored file back and compares it blob by blob with the snapshot.
fn verify_file(repo: &Repository, f: &PlannedFile) -> std::result::Result<(), String> {
    let file = f.open(false).map_err(|e| format!("verify: open: {e}"))?;
    let mut off = 0u64;
    let empty = Vec::new();
    for id in f.node.content.as_ref().unwrap_or(&empty) {
        let len = repo
            .blob_location(BlobType::Data, id)
            .map(|l| l.data_length())
            .ok_or_else(|| format!("verify: blob {id} not in the index"))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, off)
            .map_err(|e| format!("verify: read at {off}: {e}"))?;
        if Id::hash(&buf) != *id {
            return Err(format!(
                "verify: content at offset {off} (blob {id}) differs from the snapshot"
            ));
        }
        off += len;
    }
    let size = file.metadata().map_err(|e| format!("verify: {e}"))?.len();
    if size != off {
        return Err(format!("verify: size is {size}, the snapshot says {off}"));
    }
    Ok(())
}

/// The permission bits to apply, without setuid/setgid unless allowed.
fn allowed_perm(node: &Node, privileged: &Privileged, skipped: &mut Vec<String>) -> u32 {
    let mut perm = gomode::to_unix_perm(node.mode);
    if !privileged.setid && perm & (libc::S_ISUID | libc::S_ISGID) != 0 {
        perm &= !(libc::S_ISUID | libc::S_ISGID);
        skipped.push("setuid/setgid bits not restored: not allowed for this restore".into());
    }
    perm
}

/// The xattrs to apply; the others are reported.
fn allowed_xattrs<'n>(
    node: &'n Node,
    privileged: &Privileged,
    skipped: &mut Vec<String>,
) -> Vec<&'n crate::format::repofile::ExtendedAttribute> {
    node.extended_attributes
        .iter()
        .filter(|xa| {
            let ok = privileged.xattr_allowed(&xa.name);
            if !ok {
                skipped.push(format!(
                    "xattr {} not restored: not allowed for this restore",
                    xa.name
                ));
            }
            ok
        })
        .collect()
}

fn ts(t: &chrono::DateTime<chrono::FixedOffset>) -> (i64, u32) {
    (t.timestamp(), t.timestamp_subsec_nanos())
}

fn chown_problem(e: std::io::Error, problems: &mut Vec<String>) {
    // Like cp -a and restic: only root is expected to be able to chown.
    if nix::unistd::geteuid().is_root() || e.kind() != std::io::ErrorKind::PermissionDenied {
        problems.push(format!("chown: {e}"));
    }
}

fn problems_result(problems: Vec<String>) -> std::result::Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("metadata: {}", problems.join("; ")))
    }
}

/// Owner, xattrs, mode and times of an open regular file or directory, in
/// the order that keeps them: chown clears setuid/setgid, so chmod comes
/// after it; times last. Everything on the fd: no name is resolved.
fn apply_fd(
    fd: BorrowedFd<'_>,
    node: &Node,
    privileged: &Privileged,
    skipped: &mut Vec<String>,
) -> std::result::Result<(), String> {
    let mut problems = Vec::new();
    if let Err(e) = beneath::chown_fd(fd, node.uid, node.gid) {
        chown_problem(e, &mut problems);
    }
    for xa in allowed_xattrs(node, privileged, skipped) {
        if let Err(e) = beneath::set_xattr_fd(fd, &xa.name, &xa.value) {
            problems.push(format!("xattr {}: {e}", xa.name));
        }
    }
    if let Err(e) = beneath::chmod_fd(fd, allowed_perm(node, privileged, skipped)) {
        problems.push(format!("chmod: {e}"));
    }
    if let Err(e) = beneath::set_times_fd(fd, ts(&node.atime), ts(&node.mtime)) {
        problems.push(format!("set times: {e}"));
    }
    problems_result(problems)
}

/// The same for a symlink, FIFO or device `node.name` in `dir` that this
/// restore just created (of type `ifmt`). chown and utimes act on the entry
/// itself (`AT_SYMLINK_NOFOLLOW`) and so never leave `dir`; chmod and
/// xattrs, which have no such form, go through an `O_PATH` fd checked to be
/// of the right type (see [`beneath`]). Linux keeps no symlink modes, and
/// xattrs on symlinks are reported, not set.
fn apply_at(
    dir: BorrowedFd<'_>,
    node: &Node,
    ifmt: u32,
    privileged: &Privileged,
    skipped: &mut Vec<String>,
) -> std::result::Result<(), String> {
    let mut problems = Vec::new();
    let name = &node.name;
    if let Err(e) = beneath::chown_at(dir, name, node.uid, node.gid) {
        chown_problem(e, &mut problems);
    }
    if ifmt == libc::S_IFLNK {
        if !node.extended_attributes.is_empty() {
            skipped.push("xattrs of a symlink are not restored".into());
        }
    } else {
        match beneath::open_path_at(dir, name).and_then(|fd| {
            let st = beneath::stat_fd(fd.as_fd())?;
            if beneath::kind(&st) != ifmt {
                return Err(std::io::Error::other("replaced while being restored"));
            }
            Ok(fd)
        }) {
            Ok(fd) => {
                for xa in allowed_xattrs(node, privileged, skipped) {
                    if let Err(e) = beneath::set_xattr_opath(fd.as_fd(), &xa.name, &xa.value) {
                        problems.push(format!("xattr {}: {e}", xa.name));
                    }
                }
                let perm = allowed_perm(node, privileged, skipped);
                if let Err(e) = beneath::chmod_opath(fd.as_fd(), perm) {
                    problems.push(format!("chmod: {e}"));
                }
            }
            Err(e) => problems.push(format!("open: {e}")),
        }
    }
    if let Err(e) = beneath::set_times_at(dir, name, ts(&node.atime), ts(&node.mtime)) {
        problems.push(format!("set times: {e}"));
    }
    problems_result(problems)
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

/// Makes `name` in `dir` a real directory and opens it: an existing
/// symlink or file there is removed first. The open refuses a symlink, so
/// one a pod swaps in after our check makes it fail rather than lead out.
/// Returns the fd and whether the directory was created.
fn prepare_dir(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<(OwnedFd, bool)> {
    match beneath::stat_at(dir, name) {
        Ok(st) if beneath::kind(&st) == libc::S_IFDIR => {
            Ok((beneath::open_dir_at(dir, name)?, false))
        }
        Ok(_) => {
            beneath::unlink_at(dir, name)?;
            beneath::mkdir_at(dir, name)?;
            Ok((beneath::open_dir_at(dir, name)?, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            beneath::mkdir_at(dir, name)?;
            Ok((beneath::open_dir_at(dir, name)?, true))
        }
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `name` in `dir` unless it is absent; a
/// directory in the way of a file is an error (we do not delete user
/// directories).
fn remove_non_dir(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<()> {
    match beneath::stat_at(dir, name) {
        Ok(st) if beneath::kind(&st) == libc::S_IFDIR => {
            Err(std::io::Error::other("a directory is in the way"))
        }
        Ok(_) => beneath::unlink_at(dir, name),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Restores the tree `tree` (a snapshot's root) into `opts.target`.
/// The repository's index must be loaded.
pub fn restore(repo: &Repository, tree: &Id, opts: &RestoreOptions) -> Result<RestoreResult> {
    restore_with_progress(repo, tree, opts, &Progress::default())
}

/// [`restore`], reporting live progress into `progress`.
pub fn restore_with_progress(
    repo: &Repository,
    tree: &Id,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreResult> {
    let includes = Patterns::new(&opts.includes).map_err(Error::InvalidArgument)?;
    let excludes = Patterns::new(&opts.excludes).map_err(Error::InvalidArgument)?;
    fs::create_dir_all(&opts.target)
        .map_err(|e| Error::local("create target directory", &opts.target, e))?;
    let target = fs::canonicalize(&opts.target)
        .map_err(|e| Error::local("resolve target", &opts.target, e))?;
    // The one path resolved: the target the caller chose. Everything
    // below goes through this fd.
    let root: DirFd = Arc::new(
        beneath::open_dir_path(&target).map_err(|e| Error::local("open target", &target, e))?,
    );
    beneath::raise_fd_limit();
    let mut p = Planner {
        repo,
        opts,
        includes,
        excludes,
        hardlinks: HashMap::new(),
        files: Vec::new(),
        packs: HashMap::new(),
        dirs: Vec::new(),
        result: RestoreResult::default(),
    };
    // One level of recursion per directory: on a stack that holds
    // depth::MAX_DEPTH of them, whatever the caller's thread has.
    depth::on_deep_stack(|| p.walk(tree, &root, &target, b"/"))?;
    progress
        .files_total
        .store(p.files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(
        p.packs
            .values()
            .flat_map(|m| m.values())
            .map(|b| b.loc.data_length() * b.writes.len() as u64)
            .sum(),
        Ordering::Relaxed,
    );
    progress.scan_done.store(true, Ordering::Relaxed);
    for f in &p.files {
        if f.remaining.load(Ordering::Relaxed) == 0 {
            progress.add_file();
        }
    }
    let threads = if opts.threads == 0 {
        2 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let packs = std::mem::take(&mut p.packs);
    if progress.is_cancelled() {
        return Err(Error::Cancelled);
    }
    p.result.bytes_written = fill_files(repo, &p.files, packs, threads, progress);
    if progress.is_cancelled() {
        return Err(Error::Cancelled);
    }

    // Metadata of files, then verification, in parallel.
    type Outcome = (Vec<u8>, Option<String>, Vec<String>);
    let failed: Vec<Outcome> = p
        .files
        .par_iter()
        .filter_map(|f| {
            if let Some(msg) = f.damaged.lock().expect("damaged").take() {
                // Wrong content is worse than none: remove the file and its links.
                let _ = beneath::unlink_at(f.dir.as_fd(), &f.name);
                for (d, n) in f.links.lock().expect("links").iter() {
                    let _ = beneath::unlink_at(d.as_fd(), n);
                }
                progress.add_error();
                return Some((f.snap_path.clone(), Some(msg), Vec::new()));
            }
            if f.fill == Fill::Compare {
                if let Err(e) = f.open(true).and_then(|h| h.set_len(f.node.size)) {
                    return Some((
                        f.snap_path.clone(),
                        Some(format!("truncate: {e}")),
                        Vec::new(),
                    ));
                }
            }
            if opts.verify {
                if let Err(m) = verify_file(repo, f) {
                    progress.add_error();
                    return Some((f.snap_path.clone(), Some(m), Vec::new()));
                }
            }
            let mut skipped = Vec::new();
            let r = f
                .open(false)
                .map_err(|e| format!("metadata: open: {e}"))
                .and_then(|h| apply_fd(h.as_fd(), &f.node, &opts.privileged, &mut skipped));
            Some((f.snap_path.clone(), r.err(), skipped))
        })
        .collect();
    for (path, msg, skipped) in failed {
        if let Some(m) = msg {
            p.fail(&path, m);
        }
        for m in skipped {
            p.skip(&path, m);
        }
    }
    // Directories deepest first: children are complete before a
    // directory's own times are set.
    let dirs = std::mem::take(&mut p.dirs);
    for d in dirs.iter().rev() {
        let mut skipped = Vec::new();
        if let Err(m) = apply_fd(d.fd.as_fd(), &d.node, &opts.privileged, &mut skipped) {
            p.fail(&d.snap_path, format!("{}: {m}", d.path.display()));
        }
        for m in skipped {
            p.skip(&d.snap_path, m);
        }
    }
    let damaged_files = p
        .result
        .errors
        .iter()
        .filter(|e| e.message.starts_with("not restored"))
        .count() as u64;
    p.result.files = p.result.files.saturating_sub(damaged_files);
    Ok(p.result)
}

#[cfg(test)]
mod tests {
    use super::non_zero_runs;

    #[test]
    fn zero_blocks_are_skipped_at_file_block_granularity() {
        let mut d = vec![0u8; 5 * 4096];
        d[10] = 1; // first block
        d[3 * 4096 + 5] = 1; // fourth block
        assert_eq!(non_zero_runs(0, &d), vec![(0, 4096), (3 * 4096, 4 * 4096)]);
        // Unaligned placement: partial blocks at the edges are written.
        let z = vec![0u8; 3 * 4096];
        assert_eq!(
            non_zero_runs(100, &z),
            vec![(0, 3996), (3996 + 2 * 4096, 3 * 4096)]
        );
        assert_eq!(non_zero_runs(0, &[]), vec![]);
    }
}
