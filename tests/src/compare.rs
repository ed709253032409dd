//! Comparing two directory trees entry by entry: names, types, content and
//! metadata, including hard-link structure.
//!
//! Both trees are walked in lockstep in the same order (siblings sorted by
//! name bytes, depth first), so memory stays bounded by directory width and
//! hard-linked files, not by tree size, and file content is streamed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

/// Which checks [`compare_trees`] makes. The default checks everything
/// except the metadata of the two roots themselves.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub check_mode: bool,
    /// Modification times to the nanosecond; see also the two flags below.
    pub check_mtime: bool,
    /// Modification times of directories (when `check_mtime`).
    pub check_dir_mtime: bool,
    /// Modification times of symlinks themselves (when `check_mtime`).
    pub check_symlink_mtime: bool,
    /// uid and gid.
    pub check_ownership: bool,
    /// Regular file size and bytes.
    pub check_content: bool,
    /// Extended attributes whose names start with one of `xattr_prefixes`.
    pub check_xattrs: bool,
    /// Name prefixes of the extended attributes compared; `user.` by
    /// default, as `security.*` and `trusted.*` depend on the system. An
    /// empty prefix matches every name.
    pub xattr_prefixes: Vec<OsString>,
    /// Names sharing an inode on one side share one on the other.
    pub check_hard_links: bool,
    /// Metadata (mode, times, owner, xattrs) of the two roots. Off by
    /// default: a restore target is made by whoever restores.
    pub check_root_metadata: bool,
}

impl Default for CompareOptions {
    fn default() -> CompareOptions {
        CompareOptions {
            check_mode: true,
            check_mtime: true,
            check_dir_mtime: true,
            check_symlink_mtime: true,
            check_ownership: true,
            check_content: true,
            check_xattrs: true,
            xattr_prefixes: vec![OsString::from("user.")],
            check_hard_links: true,
            check_root_metadata: false,
        }
    }
}

/// The type of a directory entry, as `lstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    fn of(meta: &Metadata) -> FileKind {
        let t = meta.file_type();
        if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_dir() {
            FileKind::Dir
        } else if t.is_file() {
            FileKind::File
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_socket() {
            FileKind::Socket
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else {
            unreachable!("lstat returned an unknown file type")
        }
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: i64,
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

/// Which tree an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Expected,
    Actual,
}

/// One way in which the trees differ, at `path` (relative to the roots;
/// empty for the roots themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: PathBuf,
    pub kind: DifferenceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DifferenceKind {
    /// Only in the expected tree. A missing directory's contents are not
    /// listed one by one.
    Missing(FileKind),
    /// Only in the actual tree (contents of an extra directory not listed).
    Extra(FileKind),
    /// Present in both, of different types (contents not compared further).
    Type {
        expected: FileKind,
        actual: FileKind,
    },
    /// `mode & 0o7777`.
    Mode { expected: u32, actual: u32 },
    Mtime {
        expected: Timestamp,
        actual: Timestamp,
    },
    Owner {
        expected: (u32, u32),
        actual: (u32, u32),
    },
    /// The target bytes of a symlink.
    SymlinkTarget {
        expected: OsString,
        actual: OsString,
    },
    /// Regular file sizes (content not compared then).
    Size { expected: u64, actual: u64 },
    /// Same size; the first differing byte is at `offset`.
    Content { offset: u64 },
    /// Device numbers of character or block devices.
    Rdev { expected: u64, actual: u64 },
    /// An extended attribute's value; `None` where it is absent.
    Xattr {
        name: OsString,
        expected: Option<Vec<u8>>,
        actual: Option<Vec<u8>>,
    },
    /// Names present in both trees, connected by sharing inodes on either
    /// side, grouped by inode on each side: `[[a, b], [c]]` means `a` and `b`
    /// are one file and `c` another. `path` is the first of them.
    HardLinks {
        expected: Vec<Vec<PathBuf>>,
        actual: Vec<Vec<PathBuf>>,
    },
    /// The entry could not be read; it is not compared further.
    Unreadable { side: Side, error: String },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DifferenceKind::*;
        write!(f, "{:?}: ", self.path)?;
        match &self.kind {
            Missing(kind) => write!(f, "missing ({kind:?} expected, absent in actual tree)"),
            Extra(kind) => write!(f, "extra ({kind:?} in actual tree only)"),
            Type { expected, actual } => write!(f, "type {expected:?} expected, {actual:?} actual"),
            Mode { expected, actual } => {
                write!(f, "mode {expected:#06o} expected, {actual:#06o} actual")
            }
            Mtime { expected, actual } => write!(f, "mtime {expected} expected, {actual} actual"),
            Owner { expected, actual } => write!(
                f,
                "owner {}:{} expected, {}:{} actual",
                expected.0, expected.1, actual.0, actual.1
            ),
            SymlinkTarget { expected, actual } => {
                write!(f, "symlink target {expected:?} expected, {actual:?} actual")
            }
            Size { expected, actual } => write!(f, "size {expected} expected, {actual} actual"),
            Content { offset } => write!(f, "content differs, first at byte offset {offset}"),
            Rdev { expected, actual } => {
                write!(f, "rdev {expected:#x} expected, {actual:#x} actual")
            }
            Xattr {
                name,
                expected,
                actual,
            } => write!(
                f,
                "xattr {name:?}: {} expected, {} actual",
                show_value(expected.as_deref()),
                show_value(actual.as_deref())
            ),
            HardLinks { expected, actual } => {
                write!(
                    f,
                    "hard links: names grouped by inode {expected:?} expected, {actual:?} actual"
                )
            }
            Unreadable { side, error } => write!(f, "cannot read {side:?} side: {error}"),
        }
    }
}

fn show_value(value: Option<&[u8]>) -> String {
    match value {
        None => "absent".to_string(),
        Some(v) => format!("\"{}\"", v.escape_ascii()),
    }
}

/// How many differences [`assert_trees_equal`] prints.
const SHOWN_DIFFERENCES: usize = 50;

/// Panics, listing the differences, unless [`compare_trees`] finds none.
#[track_caller]
pub fn assert_trees_equal(expected: &Path, actual: &Path, opts: &CompareOptions) {
    let diffs = compare_trees(expected, actual, opts);
    if diffs.is_empty() {
        return;
    }
    let mut msg = format!(
        "trees differ: expected {expected:?}, actual {actual:?}: {} difference(s)",
        diffs.len()
    );
    if diffs.len() > SHOWN_DIFFERENCES {
        msg.push_str(&format!(", the first {SHOWN_DIFFERENCES}"));
    }
    msg.push(':');
    for diff in diffs.iter().take(SHOWN_DIFFERENCES) {
        msg.push_str(&format!("\n  {diff}"));
    }
    panic!("{msg}");
}

/// Every difference between the trees at `expected` and `actual`, in walk
/// order, then hard-link differences. Symlinks are never followed, the roots
/// included.
pub fn compare_trees(expected: &Path, actual: &Path, opts: &CompareOptions) -> Vec<Difference> {
    let mut cmp = Comparison {
        opts,
        diffs: Vec::new(),
        links: LinkTracker::default(),
    };
    let mut exp = Walk::new(expected, Side::Expected);
    let mut act = Walk::new(actual, Side::Actual);
    let mut e = exp.next(&mut cmp.diffs);
    let mut a = act.next(&mut cmp.diffs);
    loop {
        let order = match (&e, &a) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.rel.cmp(&y.rel),
        };
        match order {
            Ordering::Less => {
                let x = e.take().expect("an expected entry sorts first");
                cmp.push(&x.rel, DifferenceKind::Missing(x.kind));
                exp.skip_contents(&x);
                e = exp.next(&mut cmp.diffs);
            }
            Ordering::Greater => {
                let y = a.take().expect("an actual entry sorts first");
                cmp.push(&y.rel, DifferenceKind::Extra(y.kind));
                act.skip_contents(&y);
                a = act.next(&mut cmp.diffs);
            }
            Ordering::Equal => {
                let (x, y) = (e.take().expect("same path"), a.take().expect("same path"));
                if x.kind == y.kind {
                    cmp.entries(&x, &y);
                } else {
                    let kind = DifferenceKind::Type {
                        expected: x.kind,
                        actual: y.kind,
                    };
                    cmp.push(&x.rel, kind);
                    exp.skip_contents(&x);
                    act.skip_contents(&y);
                }
                e = exp.next(&mut cmp.diffs);
                a = act.next(&mut cmp.diffs);
            }
        }
    }
    if opts.check_hard_links {
        let links = std::mem::take(&mut cmp.links);
        cmp.diffs.extend(links.differences());
    }
    cmp.diffs
}

/// One entry of a walk.
struct Entry {
    /// Full path.
    path: PathBuf,
    /// Path relative to the walk's root.
    rel: PathBuf,
    /// `lstat` of `path`.
    meta: Metadata,
    kind: FileKind,
}

/// A depth-first walk with siblings sorted by name bytes.
struct Walk {
    /// The underlying walk; symlinks are not followed.
    it: walkdir::IntoIter,
    /// Where relative paths start.
    root: PathBuf,
    /// Reported with read errors.
    side: Side,
}

impl Walk {
    fn new(root: &Path, side: Side) -> Walk {
        Walk {
            it: WalkDir::new(root)
                .follow_links(false)
                .follow_root_links(false)
                .sort_by_file_name()
                .into_iter(),
            root: root.to_path_buf(),
            side,
        }
    }

    /// The next entry; read errors become differences and are skipped.
    fn next(&mut self, diffs: &mut Vec<Difference>) -> Option<Entry> {
        loop {
            let item = self.it.next()?;
            let result = item.and_then(|dent| {
                let meta = dent.metadata()?;
                Ok((dent.into_path(), meta))
            });
            match result {
                Ok((path, meta)) => {
                    let rel = path
                        .strip_prefix(&self.root)
                        .expect("walkdir yields paths under its root")
                        .to_path_buf();
                    let kind = FileKind::of(&meta);
                    return Some(Entry {
                        path,
                        rel,
                        meta,
                        kind,
                    });
                }
                Err(err) => {
                    let rel = err
                        .path()
                        .and_then(|p| p.strip_prefix(&self.root).ok())
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    diffs.push(Difference {
                        path: rel,
                        kind: DifferenceKind::Unreadable {
                            side: self.side,
                            error: err.to_string(),
                        },
                    });
                }
            }
        }
    }

    /// Does not descend into `entry`, the entry last returned, if it is a
    /// directory.
    fn skip_contents(&mut self, entry: &Entry) {
        if entry.kind == FileKind::Dir {
            self.it.skip_current_dir();
        }
    }
}

/// State of one [`compare_trees`] call.
struct Comparison<'a> {
    /// What to check.
    opts: &'a CompareOptions,
    /// Found so far.
    diffs: Vec<Difference>,
    /// Inodes of the hard-linked entries present on both sides.
    links: LinkTracker,
}

impl Comparison<'_> {
    fn push(&mut self, rel: &Path, kind: DifferenceKind) {
        self.diffs.push(Difference {
            path: rel.to_path_buf(),
            kind,
        });
    }

    /// Compares two entries of the same path and type.
    fn entries(&mut self, x: &Entry, y: &Entry) {
        let opts = self.opts;
        let (em, am) = (&x.meta, &y.meta);
        let is_root = x.rel.as_os_str().is_empty();
        if !is_root || opts.check_root_metadata {
            if opts.check_mode && em.mode() & 0o7777 != am.mode() & 0o7777 {
                self.push(
                    &x.rel,
                    DifferenceKind::Mode {
                        expected: em.mode() & 0o7777,
                        actual: am.mode() & 0o7777,
                    },
                );
            }
            let mtime_checked = opts.check_mtime
                && (x.kind != FileKind::Dir || opts.check_dir_mtime)
                && (x.kind != FileKind::Symlink || opts.check_symlink_mtime);
            let (et, at) = (mtime(em), mtime(am));
            if mtime_checked && et != at {
                self.push(
                    &x.rel,
                    DifferenceKind::Mtime {
                        expected: et,
                        actual: at,
                    },
                );
            }
            if opts.check_ownership && (em.uid(), em.gid()) != (am.uid(), am.gid()) {
                self.push(
                    &x.rel,
                    DifferenceKind::Owner {
                        expected: (em.uid(), em.gid()),
                        actual: (am.uid(), am.gid()),
                    },
                );
            }
            if opts.check_xattrs {
                self.xattrs(x, y);
            }
        }
        match x.kind {
            FileKind::Symlink => self.symlink_targets(x, y),
            FileKind::File if opts.check_content => self.contents(x, y),
            FileKind::CharDevice | FileKind::BlockDevice if em.rdev() != am.rdev() => {
                self.push(
                    &x.rel,
                    DifferenceKind::Rdev {
                        expected: em.rdev(),
                        actual: am.rdev(),
                    },
                );
            }
            _ => {}
        }
        if opts.check_hard_links && x.kind != FileKind::Dir && (em.nlink() > 1 || am.nlink() > 1) {
            self.links.add(&x.rel, em, am);
        }
    }

    fn symlink_targets(&mut self, x: &Entry, y: &Entry) {
        let Some(et) = self.read(x, Side::Expected, fs::read_link(&x.path)) else {
            return;
        };
        let Some(at) = self.read(y, Side::Actual, fs::read_link(&y.path)) else {
            return;
        };
        if et != at {
            self.push(
                &x.rel,
                DifferenceKind::SymlinkTarget {
                    expected: et.into_os_string(),
                    actual: at.into_os_string(),
                },
            );
        }
    }

    fn contents(&mut self, x: &Entry, y: &Entry) {
        let (es, as_) = (x.meta.len(), y.meta.len());
        if es != as_ {
            self.push(
                &x.rel,
                DifferenceKind::Size {
                    expected: es,
                    actual: as_,
                },
            );
            return;
        }
        let Some(ef) = self.read(x, Side::Expected, File::open(&x.path)) else {
            return;
        };
        let Some(af) = self.read(y, Side::Actual, File::open(&y.path)) else {
            return;
        };
        match first_difference(ef, af) {
            Ok(None) => {}
            Ok(Some(offset)) => self.push(&x.rel, DifferenceKind::Content { offset }),
            Err((side, e)) => self.push(
                &x.rel,
                DifferenceKind::Unreadable {
                    side,
                    error: e.to_string(),
                },
            ),
        }
    }

    fn xattrs(&mut self, x: &Entry, y: &Entry) {
        let Some(en) = self.read(
            x,
            Side::Expected,
            xattr_names(&x.path, &self.opts.xattr_prefixes),
        ) else {
            return;
        };
        let Some(an) = self.read(
            y,
            Side::Actual,
            xattr_names(&y.path, &self.opts.xattr_prefixes),
        ) else {
            return;
        };
        let mut names: Vec<&OsString> = en.iter().chain(an.iter()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let ev = if en.contains(name) {
                self.read(x, Side::Expected, xattr::get(&x.path, name))
            } else {
                Some(None)
            };
            let av = if an.contains(name) {
                self.read(y, Side::Actual, xattr::get(&y.path, name))
            } else {
                Some(None)
            };
            if let (Some(ev), Some(av)) = (ev, av) {
                if ev != av {
                    self.push(
                        &x.rel,
                        DifferenceKind::Xattr {
                            name: name.clone(),
                            expected: ev,
                            actual: av,
                        },
                    );
                }
            }
        }
    }

    /// The value of `result`, or `None` after recording why not.
    fn read<T>(&mut self, entry: &Entry, side: Side, result: io::Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(
                    &entry.rel,
                    DifferenceKind::Unreadable {
                        side,
                        error: format!("{:?}: {e}", entry.path),
                    },
                );
                None
            }
        }
    }
}

fn mtime(meta: &Metadata) -> Timestamp {
    Timestamp {
        sec: meta.mtime(),
        nsec: meta.mtime_nsec(),
    }
}

/// The extended attribute names of `path` (not following symlinks) that
/// start with one of `prefixes`, sorted. A filesystem without extended
/// attributes has none.
fn xattr_names(path: &Path, prefixes: &[OsString]) -> io::Result<Vec<OsString>> {
    let attrs = match xattr::list(path) {
        Ok(attrs) => attrs,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<OsString> = attrs
        .filter(|name| {
            prefixes
                .iter()
                .any(|p| name.as_bytes().starts_with(p.as_bytes()))
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Size of the buffers file content is compared in.
const COMPARE_BUFFER: usize = 1024 * 1024;

/// Offset of the first differing byte of two readers, or `None` if they
/// hold the same bytes.
fn first_difference(
    mut expected: impl Read,
    mut actual: impl Read,
) -> Result<Option<u64>, (Side, io::Error)> {
    let mut eb = vec![0u8; COMPARE_BUFFER];
    let mut ab = vec![0u8; COMPARE_BUFFER];
    let mut offset = 0u64;
    loop {
        let en = fill(&mut expected, &mut eb).map_err(|e| (Side::Expected, e))?;
        let an = fill(&mut actual, &mut ab).map_err(|e| (Side::Actual, e))?;
        let common = en.min(an);
        if let Some(i) = eb[..common]
            .iter()
            .zip(&ab[..common])
            .position(|(e, a)| e != a)
        {
            return Ok(Some(offset + i as u64));
        }
        if en != an {
            // One side ended early (the file changed size while being read).
            return Ok(Some(offset + common as u64));
        }
        if en == 0 {
            return Ok(None);
        }
        offset += en as u64;
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Inode identity.
type InodeKey = (u64, u64);

/// A name present on both sides with more than one link on at least one.
struct LinkedName {
    /// Relative path.
    rel: PathBuf,
    /// Its inode in the expected tree, `None` if it has a single link there.
    expected: Option<InodeKey>,
    /// Its inode in the actual tree, likewise.
    actual: Option<InodeKey>,
}

impl LinkedName {
    fn key(&self, side: Side) -> Option<InodeKey> {
        match side {
            Side::Expected => self.expected,
            Side::Actual => self.actual,
        }
    }
}

/// The hard-link structure of the entries present on both sides.
#[derive(Default)]
struct LinkTracker {
    /// In walk order.
    names: Vec<LinkedName>,
}

impl LinkTracker {
    fn add(&mut self, rel: &Path, em: &Metadata, am: &Metadata) {
        let key = |m: &Metadata| (m.nlink() > 1).then(|| (m.dev(), m.ino()));
        self.names.push(LinkedName {
            rel: rel.to_path_buf(),
            expected: key(em),
            actual: key(am),
        });
    }

    /// One difference per set of names connected by sharing an inode on
    /// either side, when the sides group them differently. Only names present
    /// on both sides count: a name linked to something outside the trees or
    /// to a name missing on the other side is not a difference by itself.
    fn differences(self) -> Vec<Difference> {
        let n = self.names.len();
        // Union-find over indices into `names`.
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for side in [Side::Expected, Side::Actual] {
            let mut first: HashMap<InodeKey, usize> = HashMap::new();
            for (i, name) in self.names.iter().enumerate() {
                if let Some(key) = name.key(side) {
                    let j = *first.entry(key).or_insert(i);
                    let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                    parent[ri.max(rj)] = ri.min(rj);
                }
            }
        }
        // Components in walk order of their first name.
        let mut components: Vec<Vec<usize>> = Vec::new();
        let mut component_of: HashMap<usize, usize> = HashMap::new();
        for i in 0..n {
            let root = find(&mut parent, i);
            let c = *component_of.entry(root).or_insert_with(|| {
                components.push(Vec::new());
                components.len() - 1
            });
            components[c].push(i);
        }
        let mut diffs = Vec::new();
        for members in components {
            let expected = self.groups(&members, Side::Expected);
            let actual = self.groups(&members, Side::Actual);
            if expected != actual {
                diffs.push(Difference {
                    path: self.names[members[0]].rel.clone(),
                    kind: DifferenceKind::HardLinks { expected, actual },
                });
            }
        }
        diffs
    }

    /// `members` grouped by inode on `side`, groups in order of their first
    /// name, names in walk order.
    fn groups(&self, members: &[usize], side: Side) -> Vec<Vec<PathBuf>> {
        let mut groups: Vec<(Option<InodeKey>, Vec<PathBuf>)> = Vec::new();
        for &i in members {
            let name = &self.names[i];
            let key = name.key(side);
            match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
                Some((_, names)) => names.push(name.rel.clone()),
                None => groups.push((key, vec![name.rel.clone()])),
            }
        }
        groups.into_iter().map(|(_, names)| names).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{self, FixtureOptions};
    use filetime::FileTime;
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use tempfile::TempDir;
    use DifferenceKind::*;

    fn cp_a(src: &Path, dst: &Path) {
        let status = Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(dst)
            .status()
            .unwrap();
        assert!(status.success(), "cp -a {src:?} {dst:?}: {status}");
    }

    /// A small fixture and a `cp -a` copy of it: (temp dir, original, copy).
    fn fixture_and_copy() -> (TempDir, PathBuf, PathBuf) {
        let tmp = crate::tempdir();
        let (src, copy) = (tmp.path().join("src"), tmp.path().join("copy"));
        let report = fixture::build_tree(&src, &FixtureOptions::small()).unwrap();
        assert!(report.xattrs_supported, "{report:?}");
        cp_a(&src, &copy);
        (tmp, src, copy)
    }

    fn diffs(expected: &Path, actual: &Path) -> Vec<Difference> {
        compare_trees(expected, actual, &CompareOptions::default())
    }

    fn diff(path: &str, kind: DifferenceKind) -> Difference {
        Difference {
            path: PathBuf::from(path),
            kind,
        }
    }

    /// Runs `change`, then puts back the atime and mtime that `paths` had
    /// before (on whatever entry is then at each path), so that a test
    /// changes exactly one thing.
    fn keeping_times(paths: &[&Path], change: impl FnOnce()) {
        let times: Vec<_> = paths
            .iter()
            .map(|p| {
                let m = fs::symlink_metadata(p).unwrap();
                (
                    FileTime::from_last_access_time(&m),
                    FileTime::from_last_modification_time(&m),
                )
            })
            .collect();
        change();
        for (path, (atime, mtime)) in paths.iter().zip(times) {
            if fs::symlink_metadata(path).is_ok() {
                filetime::set_symlink_file_times(path, atime, mtime).unwrap();
            }
        }
    }

    fn set_mtime(path: &Path, sec: i64, nsec: u32) {
        let m = fs::symlink_metadata(path).unwrap();
        let atime = FileTime::from_last_access_time(&m);
        filetime::set_symlink_file_times(path, atime, FileTime::from_unix_time(sec, nsec)).unwrap();
    }

    fn timestamp(path: &Path) -> Timestamp {
        mtime(&fs::symlink_metadata(path).unwrap())
    }

    #[test]
    fn tree_equals_itself() {
        let tmp = crate::tempdir();
        fixture::build_tree(tmp.path(), &FixtureOptions::small()).unwrap();
        let all = CompareOptions {
            check_root_metadata: true,
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(tmp.path(), tmp.path(), &all), vec![]);
    }

    #[test]
    fn tree_equals_its_cp_a_copy() {
        let (_tmp, src, copy) = fixture_and_copy();
        // cp -a also keeps the root's metadata.
        let all = CompareOptions {
            check_root_metadata: true,
            ..CompareOptions::default()
        };
        assert_trees_equal(&src, &copy, &all);
    }

    /// The full fixture, large file over 100 MiB included, streamed through
    /// the comparison.
    #[test]
    fn full_fixture_equals_its_cp_a_copy() {
        let tmp = crate::tempdir();
        let (src, copy) = (tmp.path().join("src"), tmp.path().join("copy"));
        let opts = FixtureOptions::default();
        fixture::build_tree(&src, &opts).unwrap();
        let large = fs::metadata(src.join(fixture::LARGE_FILE)).unwrap().len();
        assert!(large > 100 * 1024 * 1024, "large file is {large} bytes");
        cp_a(&src, &copy);
        assert_trees_equal(&src, &copy, &CompareOptions::default());

        // A change in the last byte of the large file still shows.
        let path = copy.join(fixture::LARGE_FILE);
        keeping_times(&[&path], || {
            let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, b"\x01", large - 1).unwrap();
        });
        // The last MiB block of the large file is random, so the old byte
        // was 0x01 only with probability 1/256; pin that it was not.
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(fixture::LARGE_FILE, Content { offset: large - 1 })]
        );
    }

    #[test]
    fn detects_a_changed_content_byte() {
        let (_tmp, src, copy) = fixture_and_copy();
        let path = copy.join(fixture::LARGE_FILE);
        let offset = 2 * 1024 * 1024 + 7;
        keeping_times(&[&path], || {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut byte = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, offset).unwrap();
            byte[0] ^= 0x01;
            std::os::unix::fs::FileExt::write_all_at(&file, &byte, offset).unwrap();
        });
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(fixture::LARGE_FILE, Content { offset })]
        );
        let no_content = CompareOptions {
            check_content: false,
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(&src, &copy, &no_content), vec![]);
    }

    #[test]
    fn detects_a_changed_size() {
        let (_tmp, src, copy) = fixture_and_copy();
        let path = copy.join("files/empty.txt");
        keeping_times(&[&path], || fs::write(&path, b"x").unwrap());
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(
                "files/empty.txt",
                Size {
                    expected: 0,
                    actual: 1
                }
            )]
        );
    }

    #[test]
    fn detects_a_mode_bit() {
        let (_tmp, src, copy) = fixture_and_copy();
        let path = copy.join(fixture::SETUID_FILE);
        keeping_times(&[&path], || {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap()
        });
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(
                fixture::SETUID_FILE,
                Mode {
                    expected: 0o4755,
                    actual: 0o755
                }
            )]
        );
        let no_mode = CompareOptions {
            check_mode: false,
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(&src, &copy, &no_mode), vec![]);
    }

    #[test]
    fn detects_one_nanosecond_of_mtime_on_files_dirs_and_symlinks() {
        let (_tmp, src, copy) = fixture_and_copy();
        for (rel, kind) in [
            ("files/small-03.bin", FileKind::File),
            ("empty-tree/a/b", FileKind::Dir),
            ("links/to-dir", FileKind::Symlink),
        ] {
            let path = copy.join(rel);
            let before = timestamp(&path);
            let nsec = (before.nsec as u32 + 1) % 1_000_000_000;
            set_mtime(&path, before.sec, nsec);
            let after = timestamp(&path);
            assert_eq!(
                diffs(&src, &copy),
                vec![diff(
                    rel,
                    Mtime {
                        expected: before,
                        actual: after
                    }
                )],
                "{kind:?}"
            );
            let skip_kind = CompareOptions {
                check_dir_mtime: kind != FileKind::Dir,
                check_symlink_mtime: kind != FileKind::Symlink,
                check_mtime: kind != FileKind::File,
                ..CompareOptions::default()
            };
            assert_eq!(compare_trees(&src, &copy, &skip_kind), vec![], "{kind:?}");
            set_mtime(&path, before.sec, before.nsec as u32);
            assert_eq!(diffs(&src, &copy), vec![]);
        }
    }

    #[test]
    fn detects_ownership() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("detects_ownership: not root, cannot chown; ownership detection untested");
            return;
        }
        let (_tmp, src, copy) = fixture_and_copy();
        let path = copy.join("owned/link");
        let before = fs::symlink_metadata(&path).unwrap();
        std::os::unix::fs::lchown(&path, Some(before.uid()), Some(0)).unwrap();
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(
                "owned/link",
                Owner {
                    expected: (before.uid(), before.gid()),
                    actual: (before.uid(), 0)
                }
            )]
        );
        let no_owner = CompareOptions {
            check_ownership: false,
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(&src, &copy, &no_owner), vec![]);
    }

    #[test]
    fn detects_a_symlink_target() {
        let (_tmp, src, copy) = fixture_and_copy();
        let path = copy.join("links/to-file");
        keeping_times(&[&path, path.parent().unwrap()], || {
            fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("../files/small-01.bin", &path).unwrap();
        });
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(
                "links/to-file",
                SymlinkTarget {
                    expected: "../files/small-00.bin".into(),
                    actual: "../files/small-01.bin".into()
                }
            )]
        );
    }

    #[test]
    fn detects_missing_and_extra_entries() {
        let (_tmp, src, copy) = fixture_and_copy();
        let files = copy.join("files");
        let empty_tree = copy.join("empty-tree");
        keeping_times(&[&files, &empty_tree], || {
            fs::remove_file(files.join("small-02.bin")).unwrap();
            fs::remove_dir_all(empty_tree.join("a")).unwrap();
            fs::write(files.join("new.txt"), b"new").unwrap();
            fs::create_dir(empty_tree.join("e")).unwrap();
            fs::write(empty_tree.join("e/inside"), b"").unwrap();
        });
        // Contents of a missing or extra directory are not listed.
        assert_eq!(
            diffs(&src, &copy),
            vec![
                diff("empty-tree/a", Missing(FileKind::Dir)),
                diff("empty-tree/e", Extra(FileKind::Dir)),
                diff("files/new.txt", Extra(FileKind::File)),
                diff("files/small-02.bin", Missing(FileKind::File)),
            ]
        );
        // And the other way round.
        assert_eq!(
            diffs(&copy, &src),
            vec![
                diff("empty-tree/a", Extra(FileKind::Dir)),
                diff("empty-tree/e", Missing(FileKind::Dir)),
                diff("files/new.txt", Missing(FileKind::File)),
                diff("files/small-02.bin", Extra(FileKind::File)),
            ]
        );
    }

    #[test]
    fn detects_a_changed_type() {
        let (_tmp, src, copy) = fixture_and_copy();
        let fifo = copy.join(fixture::FIFO);
        let dir = copy.join("dup/nested");
        keeping_times(
            &[&fifo, &dir, fifo.parent().unwrap(), dir.parent().unwrap()],
            || {
                fs::remove_file(&fifo).unwrap();
                fs::write(&fifo, b"").unwrap();
                fs::remove_dir_all(&dir).unwrap();
                fs::write(&dir, b"a file now").unwrap();
            },
        );
        assert_eq!(
            diffs(&src, &copy),
            vec![
                diff(
                    "dup/nested",
                    Type {
                        expected: FileKind::Dir,
                        actual: FileKind::File
                    }
                ),
                diff(
                    fixture::FIFO,
                    Type {
                        expected: FileKind::Fifo,
                        actual: FileKind::File
                    }
                ),
            ]
        );
    }

    #[test]
    fn detects_a_broken_hard_link() {
        let (_tmp, src, copy) = fixture_and_copy();
        let [a, b, c] = fixture::HARD_LINK_NAMES;
        // Replace the second name with an independent file that is equal in
        // every other respect.
        let path = copy.join(b);
        keeping_times(&[&path, path.parent().unwrap()], || {
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = fs::read(&path).unwrap();
            fs::remove_file(&path).unwrap();
            fs::write(&path, content).unwrap();
            std::os::unix::fs::lchown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode() & 0o7777)).unwrap();
        });
        let p = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            diffs(&src, &copy),
            vec![diff(
                a,
                HardLinks {
                    expected: vec![p(&[a, b, c])],
                    actual: vec![p(&[a, c]), p(&[b])],
                }
            )]
        );
        // Names that became one file are found too.
        assert_eq!(
            diffs(&copy, &src),
            vec![diff(
                a,
                HardLinks {
                    expected: vec![p(&[a, c]), p(&[b])],
                    actual: vec![p(&[a, b, c])],
                }
            )]
        );
        let no_links = CompareOptions {
            check_hard_links: false,
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(&src, &copy, &no_links), vec![]);
    }

    #[test]
    fn a_hard_link_to_a_missing_name_is_only_reported_missing() {
        let (_tmp, src, copy) = fixture_and_copy();
        let [_, b, _] = fixture::HARD_LINK_NAMES;
        let path = copy.join(b);
        keeping_times(&[path.parent().unwrap()], || {
            fs::remove_file(&path).unwrap()
        });
        assert_eq!(diffs(&src, &copy), vec![diff(b, Missing(FileKind::File))]);
    }

    #[test]
    fn detects_xattr_changes() {
        let (_tmp, src, copy) = fixture_and_copy();
        let file = copy.join(fixture::XATTR_FILE);
        let dir = copy.join(fixture::XATTR_DIR);
        xattr::set(&file, "user.stash.plain", b"changed").unwrap();
        xattr::remove(&file, "user.stash.empty").unwrap();
        xattr::set(&dir, "user.stash.added", b"new").unwrap();
        assert_eq!(
            diffs(&src, &copy),
            vec![
                diff(
                    fixture::XATTR_DIR,
                    Xattr {
                        name: "user.stash.added".into(),
                        expected: None,
                        actual: Some(b"new".to_vec())
                    }
                ),
                diff(
                    fixture::XATTR_FILE,
                    Xattr {
                        name: "user.stash.empty".into(),
                        expected: Some(vec![]),
                        actual: None
                    }
                ),
                diff(
                    fixture::XATTR_FILE,
                    Xattr {
                        name: "user.stash.plain".into(),
                        expected: Some(b"hello".to_vec()),
                        actual: Some(b"changed".to_vec())
                    }
                ),
            ]
        );
        let no_xattrs = CompareOptions {
            check_xattrs: false,
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(&src, &copy, &no_xattrs), vec![]);
        let other_prefix = CompareOptions {
            xattr_prefixes: vec!["user.other.".into()],
            ..CompareOptions::default()
        };
        assert_eq!(compare_trees(&src, &copy, &other_prefix), vec![]);
    }

    /// Sibling order and path order must agree for the lockstep walk: "a b"
    /// and "a-c" sort after "a" but a byte-wise comparison of whole paths
    /// would put them before "a/x".
    #[test]
    fn lockstep_walk_handles_names_sorting_around_a_separator() {
        let tmp = crate::tempdir();
        let (src, copy) = (tmp.path().join("src"), tmp.path().join("copy"));
        for dir in ["a/y", "a.d"] {
            fs::create_dir_all(src.join(dir)).unwrap();
        }
        for file in ["a b", "a-c", "a/x", "a/y/z", "a.d/w", "a0", "\u{fc}", "z"] {
            fs::write(src.join(file), file).unwrap();
        }
        fs::write(src.join(OsStr::from_bytes(b"\xff")), b"").unwrap();
        cp_a(&src, &copy);
        assert_eq!(diffs(&src, &copy), vec![]);

        keeping_times(&[&copy], || fs::remove_file(copy.join("a b")).unwrap());
        let a_y = copy.join("a/y");
        keeping_times(&[&a_y], || fs::write(a_y.join("zz"), b"").unwrap());
        assert_eq!(
            diffs(&src, &copy),
            vec![
                diff("a/y/zz", Extra(FileKind::File)),
                diff("a b", Missing(FileKind::File))
            ]
        );
    }

    #[test]
    fn root_metadata_is_compared_only_when_asked() {
        let (_tmp, src, copy) = fixture_and_copy();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(diffs(&src, &copy), vec![]);
        let with_root = CompareOptions {
            check_root_metadata: true,
            ..CompareOptions::default()
        };
        let found = compare_trees(&src, &copy, &with_root);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, PathBuf::new());
        assert!(
            matches!(found[0].kind, Mode { actual: 0o711, .. }),
            "{found:?}"
        );
    }

    #[test]
    fn assert_trees_equal_names_odd_paths_readably() {
        let (_tmp, src, copy) = fixture_and_copy();
        let path = copy
            .join("names")
            .join(OsStr::from_bytes(b"bad-\xff\xfe-name"));
        keeping_times(&[&path], || {
            fs::write(&path, b"name is not UTF-8!").unwrap()
        });
        let newline = copy.join("names/new\nline");
        keeping_times(&[&newline], || fs::write(&newline, b"changed").unwrap());
        let payload = std::panic::catch_unwind(|| {
            assert_trees_equal(&src, &copy, &CompareOptions::default())
        })
        .expect_err("trees differ");
        let msg = payload
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(msg.contains("2 difference(s)"), "{msg}");
        assert!(
            msg.contains(
                "\n  \"names/bad-\\xFF\\xFE-name\": content differs, first at byte offset 17\n"
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with("\n  \"names/new\\nline\": size 23 expected, 7 actual"),
            "{msg}"
        );
    }

    #[test]
    fn first_difference_across_buffer_boundaries() {
        let a = vec![7u8; 3 * COMPARE_BUFFER + 5];
        assert_eq!(first_difference(&a[..], &a[..]).unwrap(), None);
        let mut b = a.clone();
        b[COMPARE_BUFFER] = 8;
        assert_eq!(
            first_difference(&a[..], &b[..]).unwrap(),
            Some(COMPARE_BUFFER as u64)
        );
        assert_eq!(
            first_difference(&a[..], &a[..a.len() - 1]).unwrap(),
            Some(a.len() as u64 - 1)
        );
        // A reader that returns one byte at a time still lines up.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let small = b"hello world";
        assert_eq!(first_difference(Trickle(small), &small[..]).unwrap(), None);
        assert_eq!(
            first_difference(Trickle(small), &b"hello_world"[..]).unwrap(),
            Some(5)
        );
    }
}
