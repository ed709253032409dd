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
//! Safety comes first: every name from the repository is checked (no empty
//! names, `.`, `..`, `/` or NUL), nothing is ever followed out of the target
//! (an existing symlink where a directory or file goes is replaced, files are
//! opened with `O_NOFOLLOW`), and a damaged blob costs only the files that
//! hold it: they are removed rather than left with wrong content, the rest is
//! restored, the damage is reported, and the caller exits non-zero.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::repofile::tree::gomode;
use crate::format::repofile::{BlobType, Node, NodeType};
use crate::ops::filter::Patterns;
use crate::ops::progress::Progress;
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
}

/// How a planned file is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// A new, empty, sparse file: write non-zero blobs only.
    Fresh,
    /// An existing file: write only blobs whose bytes differ.
    Compare,
}

/// A regular file whose content is being written.
#[derive(Debug)]
struct PlannedFile {
    path: PathBuf,
    snap_path: Vec<u8>,
    node: Node,
    fill: Fill,
    /// Other names of the same inode (hard links made to `path`).
    links: Mutex<Vec<PathBuf>>,
    /// Blob writes still to do; the file is complete at zero.
    remaining: AtomicU64,
    damaged: Mutex<Option<String>>,
}

/// One blob and everywhere it goes.
#[derive(Debug)]
struct BlobTargets {
    id: Id,
    loc: BlobLocation,
    /// (file index, offset).
    writes: Vec<(u32, u64)>,
}

struct Planner<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    includes: Patterns,
    excludes: Patterns,
    /// (device, inode) of hard-linked files → index in `files` (or a path,
    /// for files restored without content plan).
    hardlinks: HashMap<(u64, u64), Link>,
    files: Vec<PlannedFile>,
    /// pack → blob → targets.
    packs: HashMap<Id, HashMap<Id, BlobTargets>>,
    /// Directories in creation order, with their nodes, for metadata last.
    dirs: Vec<(PathBuf, Vec<u8>, Node)>,
    result: RestoreResult,
}

#[derive(Debug, Clone)]
enum Link {
    Planned(u32),
    Done(PathBuf),
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

    fn selected(&self, snap_path: &[u8]) -> bool {
        !self.excludes.matches(snap_path)
            && (self.includes.is_empty() || self.includes.matches(snap_path))
    }

    /// Walks a tree into `dir` (which exists); returns whether anything was restored.
    fn walk(&mut self, tree_id: &Id, dir: &Path, snap_dir: &[u8]) -> Result<bool> {
        let tree = match self.repo.load_tree(tree_id) {
            Ok(t) => t,
            Err(e) if is_damage(&e) => {
                self.fail(snap_dir, format!("cannot load tree {tree_id}: {e}"));
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if self.opts.delete {
            self.delete_extra(&tree.nodes, dir, snap_dir);
        }
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
            if self.excludes.matches(&snap_path) {
                continue;
            }
            let path = dir.join(OsStr::from_bytes(&node.name));
            if node.node_type == NodeType::Dir {
                any |= self.walk_dir(node, &path, snap_path)?;
            } else if self.selected(&snap_path) {
                any |= self.leaf(node, &path, snap_path);
            }
        }
        Ok(any)
    }

    /// `--delete`: removes what is in `dir` but not in the snapshot's tree
    /// (only entries the filters select).
    fn delete_extra(&mut self, nodes: &[Node], dir: &Path, snap_dir: &[u8]) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let wanted: std::collections::HashSet<&[u8]> =
            nodes.iter().map(|n| n.name.as_slice()).collect();
        for e in rd.flatten() {
            let name = e.file_name();
            if wanted.contains(name.as_bytes()) {
                continue;
            }
            let snap_path = join_snap(snap_dir, name.as_bytes());
            if !self.selected(&snap_path) {
                continue;
            }
            let p = e.path();
            let r = match e.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
            match r {
                Ok(()) => self.result.deleted += 1,
                Err(err) => self.fail(&snap_path, format!("delete {}: {err}", p.display())),
            }
        }
    }

    fn walk_dir(&mut self, node: Node, path: &Path, snap_path: Vec<u8>) -> Result<bool> {
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
        let created = match prepare_dir(path) {
            Ok(c) => c,
            Err(e) => {
                self.fail(
                    &snap_path,
                    format!("create directory {}: {e}", path.display()),
                );
                return Ok(false);
            }
        };
        let slot = self.dirs.len();
        self.dirs
            .push((path.to_path_buf(), snap_path.clone(), node));
        let any = self.walk(&subtree, path, &snap_path)?;
        if !selected && !any {
            self.dirs.remove(slot);
            if created {
                let _ = fs::remove_dir(path);
            }
            return Ok(false);
        }
        self.result.dirs += 1;
        Ok(true)
    }

    fn leaf(&mut self, node: Node, path: &Path, snap_path: Vec<u8>) -> bool {
        if node.node_type == NodeType::File {
            return self.file(node, path, snap_path);
        }
        if let Err(e) = remove_non_dir(path) {
            self.fail(
                &snap_path,
                format!("remove existing {}: {e}", path.display()),
            );
            return false;
        }
        let res = match node.node_type {
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
        if let Err(e) = res {
            self.fail(&snap_path, format!("create {}: {e}", path.display()));
            return false;
        }
        self.result.others += 1;
        if let Err(m) = set_metadata(&node, path) {
            self.fail(&snap_path, m);
        }
        true
    }

    fn file(&mut self, node: Node, path: &Path, snap_path: Vec<u8>) -> bool {
        let link_key = (node.links > 1).then_some((node.device_id, node.inode));
        let existing = fs::symlink_metadata(path).ok();
        let is_regular = existing.as_ref().is_some_and(|m| m.file_type().is_file());
        if is_regular {
            let md = existing.as_ref().expect("exists");
            let unchanged = md.len() == node.size
                && md.mtime() == node.mtime.timestamp()
                && md.mtime_nsec() == i64::from(node.mtime.timestamp_subsec_nanos());
            let snapshot_newer = (node.mtime.timestamp(), node.mtime.timestamp_subsec_nanos())
                > (md.mtime(), u32::try_from(md.mtime_nsec()).unwrap_or(0));
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
                            .or_insert_with(|| Link::Done(path.to_path_buf()));
                    }
                    self.result.files_skipped += 1;
                    self.result.files += 1;
                    self.result.bytes += node.size;
                    return true;
                }
                _ => {}
            }
        }
        // Hard links: later names link to the first.
        if let Some(k) = link_key {
            if let Some(first) = self.hardlinks.get(&k).cloned() {
                if let Err(e) = remove_non_dir(path) {
                    self.fail(
                        &snap_path,
                        format!("remove existing {}: {e}", path.display()),
                    );
                    return false;
                }
                let target = match &first {
                    Link::Planned(i) => self.files[*i as usize].path.clone(),
                    Link::Done(p) => p.clone(),
                };
                return match fs::hard_link(&target, path) {
                    Ok(()) => {
                        if let Link::Planned(i) = first {
                            self.files[i as usize]
                                .links
                                .lock()
                                .expect("links")
                                .push(path.to_path_buf());
                        }
                        self.result.files += 1;
                        true
                    }
                    Err(e) => {
                        self.fail(
                            &snap_path,
                            format!("hard link to {}: {e}", target.display()),
                        );
                        false
                    }
                };
            }
        }
        let fill = if is_regular && self.opts.overwrite == Overwrite::IfChanged {
            Fill::Compare
        } else {
            if let Err(e) = remove_non_dir(path) {
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
            Fill::Fresh => fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(path),
            Fill::Compare => fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path),
        };
        // The final size up front: what is never written reads as zeros.
        if let Err(e) = open.and_then(|f| f.set_len(offset)) {
            self.fail(&snap_path, format!("create {}: {e}", path.display()));
            return false;
        }
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
            path: path.to_path_buf(),
            snap_path,
            node,
            fill,
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
    let mut opts = fs::OpenOptions::new();
    opts.custom_flags(libc::O_NOFOLLOW);
    if f.fill == Fill::Compare {
        opts.read(true);
    }
    let file = opts.write(true).open(&f.path)?;
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
    let file = fs::File::open(&f.path).map_err(|e| format!("verify: open: {e}"))?;
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

/// Owner, xattrs, mode and times, in the order that keeps them: chown
/// clears setuid/setgid, so chmod comes after it; times last.
fn set_metadata(node: &Node, path: &Path) -> std::result::Result<(), String> {
    let mut problems = Vec::new();
    if let Err(e) = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)) {
        // Like cp -a and restic: only root is expected to be able to chown.
        if nix::unistd::geteuid().is_root() || e.kind() != std::io::ErrorKind::PermissionDenied {
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("metadata: {}", problems.join("; ")))
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
    p.walk(tree, &target, b"/")?;
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
    p.result.bytes_written = fill_files(repo, &p.files, packs, threads, progress);

    // Metadata of files, then verification, in parallel.
    let failed: Vec<(Vec<u8>, String)> = p
        .files
        .par_iter()
        .filter_map(|f| {
            if let Some(msg) = f.damaged.lock().expect("damaged").take() {
                // Wrong content is worse than none: remove the file and its links.
                let _ = fs::remove_file(&f.path);
                for l in f.links.lock().expect("links").iter() {
                    let _ = fs::remove_file(l);
                }
                progress.add_error();
                return Some((f.snap_path.clone(), msg));
            }
            if f.fill == Fill::Compare {
                if let Err(e) = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&f.path)
                    .and_then(|h| h.set_len(f.node.size))
                {
                    return Some((f.snap_path.clone(), format!("truncate: {e}")));
                }
            }
            if opts.verify {
                if let Err(m) = verify_file(repo, f) {
                    progress.add_error();
                    return Some((f.snap_path.clone(), m));
                }
            }
            set_metadata(&f.node, &f.path)
                .err()
                .map(|m| (f.snap_path.clone(), m))
        })
        .collect();
    for (path, msg) in failed {
        p.fail(&path, msg);
    }
    // Directories deepest first: children are complete before a
    // directory's own times are set.
    let dirs = std::mem::take(&mut p.dirs);
    for (path, snap_path, node) in dirs.iter().rev() {
        if let Err(m) = set_metadata(node, path) {
            p.fail(snap_path, m);
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
