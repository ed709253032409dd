//! Fixture trees: a directory holding every kind of entry, name and metadata
//! a backup tool must carry through a backup and restore unchanged.
//!
//! Everything is deterministic for a given [`FixtureOptions::seed`]: content,
//! sizes and timestamps. Two trees built with the same options compare equal
//! with [`crate::compare::compare_trees`], wherever and whenever they were
//! built.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use nix::sys::stat::Mode;
use walkdir::WalkDir;

use crate::prng::SplitMix64;

/// Regular file larger than 100 MiB with the default options.
pub const LARGE_FILE: &str = "files/large.bin";
/// Sparse file: mostly holes, with a few data regions.
pub const SPARSE_FILE: &str = "files/sparse.img";
/// The three names of one hard-linked file, in three different directories.
pub const HARD_LINK_NAMES: [&str; 3] = [
    "hardlinks/a/original.bin",
    "hardlinks/b/second-name.bin",
    "hardlinks/third-name.bin",
];
/// A named pipe.
pub const FIFO: &str = "special/fifo";
/// File with mode 0o4755.
pub const SETUID_FILE: &str = "modes/setuid";
/// Symlink whose target is not valid UTF-8 (only with
/// [`FixtureOptions::non_utf8`]).
pub const NON_UTF8_SYMLINK: &str = "links/non-utf8-target";
/// File carrying `user.*` extended attributes (when the filesystem allows).
pub const XATTR_FILE: &str = "xattrs/file";
/// Directory carrying a `user.*` extended attribute.
pub const XATTR_DIR: &str = "xattrs/dir";

/// What [`build_tree`] creates.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// Seed for all content, sizes and timestamps.
    pub seed: u64,
    /// Size of [`LARGE_FILE`]. Part random, part compressible text.
    pub large_file_size: u64,
    /// Apparent size of [`SPARSE_FILE`]; at least 2 MiB.
    pub sparse_file_size: u64,
    /// Number of small random files in `files/`, besides the fixed ones.
    pub small_files: usize,
    /// Nesting depth of `deep/`.
    pub depth: usize,
    /// Create names and a symlink target that are not valid UTF-8.
    pub non_utf8: bool,
    /// uid and gid given with `lchown` to the entries under `owned/`
    /// (only when running as root).
    pub owner: (u32, u32),
}

impl Default for FixtureOptions {
    /// The full tree: a 105 MiB file (so that anything with a 100 MiB limit
    /// shows), a 64 MiB sparse file, 40 levels of nesting.
    fn default() -> FixtureOptions {
        FixtureOptions {
            seed: 0x5354_4153_4821,
            large_file_size: 105 * MIB,
            sparse_file_size: 64 * MIB,
            small_files: 24,
            depth: 40,
            non_utf8: true,
            owner: (1234, 5678),
        }
    }
}

impl FixtureOptions {
    /// Every kind of entry, but a 3 MiB large file and an 8 MiB sparse file,
    /// for tests that run often.
    pub fn small() -> FixtureOptions {
        FixtureOptions {
            large_file_size: 3 * MIB,
            sparse_file_size: 8 * MIB,
            small_files: 12,
            ..FixtureOptions::default()
        }
    }
}

/// What [`build_tree`] managed to create.
#[derive(Debug, Clone, Default)]
pub struct FixtureReport {
    /// `user.*` extended attributes were set; false when the filesystem
    /// refuses them (the entries exist, without attributes).
    pub xattrs_supported: bool,
    /// Ownership was changed with `lchown`; false when not running as root.
    pub chown_done: bool,
    /// Regular file names (a file with three hard links counts three times).
    pub files: usize,
    /// Directories, not counting the root.
    pub dirs: usize,
    /// Symbolic links.
    pub symlinks: usize,
    /// Named pipes.
    pub fifos: usize,
    /// Whatever was left out or could not be done as asked, for test logs.
    pub notes: Vec<String>,
}

const MIB: u64 = 1024 * 1024;
const BLOCK: usize = 1024 * 1024;

/// Builds the fixture tree under `root`, which must be absent or empty.
///
/// Modes are set explicitly (the umask does not matter), ownership before
/// modes (`chown` clears setuid and setgid), and timestamps last, children
/// before their directory, so that creating an entry never disturbs a time
/// already set.
pub fn build_tree(root: &Path, opts: &FixtureOptions) -> io::Result<FixtureReport> {
    assert!(
        opts.sparse_file_size >= 2 * MIB,
        "FixtureOptions::sparse_file_size must be at least 2 MiB"
    );
    fs::create_dir_all(root).map_err(at(root, "create fixture root"))?;
    let is_root = nix::unistd::geteuid().is_root();
    let mut b = Builder {
        root,
        opts,
        is_root,
        report: FixtureReport {
            chown_done: is_root,
            xattrs_supported: true,
            ..FixtureReport::default()
        },
    };
    if !is_root {
        b.note("not running as root: ownership left unchanged and modes/no-perms not created");
    }
    b.files()?;
    b.duplicates()?;
    b.symlinks()?;
    b.hard_links()?;
    b.special()?;
    b.empty_dirs()?;
    b.deep()?;
    b.names()?;
    b.modes()?;
    b.owned()?;
    b.xattrs()?;
    b.times_dir()?;
    set_all_times(root, opts.seed)?;
    Ok(b.report)
}

/// Writes `size` pseudo-random bytes drawn from `seed` to `path`, replacing
/// any existing file. Streams in 1 MiB blocks.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut rng = SplitMix64::new(seed);
    let mut file = File::create(path).map_err(at(path, "create"))?;
    let mut buf = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).map_err(at(path, "write"))?;
        left -= n as u64;
    }
    Ok(())
}

/// Changes the content of about `fraction` (0.0 to 1.0) of the regular files
/// under `root`, chosen and changed deterministically from `seed`, and
/// returns their paths relative to `root`, sorted.
///
/// Each chosen file has bytes flipped in place, bytes appended, or is
/// truncated, so its content always differs afterwards. Modes (setuid
/// included) are put back; mtimes become "now", as with any real write.
/// Symlinks are not followed. A hard-linked file is one candidate, under the
/// first of its names in walk order; its other names change with it but are
/// not returned.
pub fn modify_some_files(root: &Path, seed: u64, fraction: f64) -> io::Result<Vec<PathBuf>> {
    assert!(
        (0.0..=1.0).contains(&fraction),
        "modify_some_files: fraction {fraction} is not within 0.0..=1.0"
    );
    let mut files = Vec::new();
    let mut inodes = HashSet::new();
    for entry in WalkDir::new(root).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let meta = entry.metadata().map_err(io::Error::other)?;
        if inodes.insert((meta.dev(), meta.ino())) {
            files.push(entry.into_path());
        }
    }
    let count = ((files.len() as f64) * fraction).round() as usize;
    let count = if fraction > 0.0 && !files.is_empty() {
        count.max(1)
    } else {
        count
    };
    let mut rng = SplitMix64::derive(seed, b"modify_some_files");
    // Partial Fisher-Yates: the first `count` entries become the sample.
    for i in 0..count {
        let j = i + rng.below((files.len() - i) as u64) as usize;
        files.swap(i, j);
    }
    files.truncate(count);
    files.sort();

    let mut changed = Vec::with_capacity(files.len());
    for path in files {
        modify_file(&path, &mut rng)?;
        let rel = path
            .strip_prefix(root)
            .expect("walkdir yields paths under its root")
            .to_path_buf();
        changed.push(rel);
    }
    Ok(changed)
}

fn modify_file(path: &Path, rng: &mut SplitMix64) -> io::Result<()> {
    let meta = fs::symlink_metadata(path).map_err(at(path, "stat"))?;
    let mode = meta.mode() & 0o7777;
    // Make it writable for a non-root caller; root writes regardless.
    fs::set_permissions(path, Permissions::from_mode(mode | 0o200)).map_err(at(path, "chmod"))?;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(at(path, "open for writing"))?;
    let len = meta.len();
    match (len, rng.below(3)) {
        (0, _) | (_, 0) => {
            let mut extra = vec![0u8; 1 + rng.below(4096) as usize];
            rng.fill(&mut extra);
            file.seek(SeekFrom::End(0)).map_err(at(path, "seek"))?;
            file.write_all(&extra).map_err(at(path, "append"))?;
        }
        (_, 1) => {
            let offset = rng.below(len);
            let n = (len - offset).min(1 + rng.below(64));
            let mut buf = vec![0u8; n as usize];
            file.seek(SeekFrom::Start(offset))
                .map_err(at(path, "seek"))?;
            file.read_exact(&mut buf).map_err(at(path, "read"))?;
            for byte in &mut buf {
                *byte ^= 0xa5;
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(at(path, "seek"))?;
            file.write_all(&buf).map_err(at(path, "overwrite"))?;
        }
        _ => file.set_len(len / 2).map_err(at(path, "truncate"))?,
    }
    drop(file);
    // Also undoes the kernel clearing setuid/setgid on write by a non-root user.
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(at(path, "chmod"))
}

/// Creates the entries of one fixture and counts them.
struct Builder<'a> {
    /// The fixture root.
    root: &'a Path,
    /// What to build.
    opts: &'a FixtureOptions,
    /// Running as root: ownership can be changed.
    is_root: bool,
    /// Filled in as entries are created.
    report: FixtureReport,
}

impl Builder<'_> {
    fn note(&mut self, note: impl Into<String>) {
        self.report.notes.push(note.into());
    }

    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn rng(&self, label: impl AsRef<[u8]>) -> SplitMix64 {
        SplitMix64::derive(self.opts.seed, label.as_ref())
    }

    fn dir(&mut self, rel: impl AsRef<Path>, mode: u32) -> io::Result<PathBuf> {
        let path = self.path(rel);
        fs::create_dir(&path).map_err(at(&path, "mkdir"))?;
        chmod(&path, mode)?;
        self.report.dirs += 1;
        Ok(path)
    }

    fn file(&mut self, rel: impl AsRef<Path>, content: &[u8], mode: u32) -> io::Result<PathBuf> {
        let path = self.path(rel);
        fs::write(&path, content).map_err(at(&path, "write"))?;
        chmod(&path, mode)?;
        self.report.files += 1;
        Ok(path)
    }

    /// A file of `size` random bytes, seeded from its relative path.
    fn random_file(&mut self, rel: impl AsRef<Path>, size: u64) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        let path = self.path(rel);
        let seed = self.rng(rel.as_os_str().as_bytes()).next_u64();
        write_random_file(&path, size, seed)?;
        chmod(&path, 0o644)?;
        self.report.files += 1;
        Ok(path)
    }

    fn symlink(&mut self, rel: impl AsRef<Path>, target: impl AsRef<OsStr>) -> io::Result<PathBuf> {
        let path = self.path(rel);
        std::os::unix::fs::symlink(target.as_ref(), &path).map_err(at(&path, "symlink"))?;
        self.report.symlinks += 1;
        Ok(path)
    }

    fn hard_link(&mut self, existing: impl AsRef<Path>, rel: impl AsRef<Path>) -> io::Result<()> {
        let (existing, path) = (self.path(existing), self.path(rel));
        fs::hard_link(&existing, &path).map_err(at(&path, "link"))?;
        self.report.files += 1;
        Ok(())
    }

    fn fifo(&mut self, rel: impl AsRef<Path>, mode: u32) -> io::Result<PathBuf> {
        let path = self.path(rel);
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
            .map_err(io::Error::from)
            .map_err(at(&path, "mkfifo"))?;
        chmod(&path, mode)?;
        self.report.fifos += 1;
        Ok(path)
    }

    /// `lchown`, then the mode again: the kernel clears setuid and setgid on
    /// a chown, and a restorer must get this order right too.
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        if !self.is_root {
            return Ok(());
        }
        let meta = fs::symlink_metadata(path).map_err(at(path, "stat"))?;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(at(path, "lchown"))?;
        if !meta.file_type().is_symlink() {
            chmod(path, meta.mode() & 0o7777)?;
        }
        Ok(())
    }

    fn files(&mut self) -> io::Result<()> {
        self.dir("files", 0o755)?;
        self.file("files/empty.txt", b"", 0o644)?;
        // Sizes around page and block boundaries, then random ones.
        let mut rng = self.rng("small-sizes");
        for i in 0..self.opts.small_files {
            let size = match i {
                0 => 1,
                1 => 4095,
                2 => 4096,
                3 => 4097,
                _ => 1 + rng.below(64 * 1024),
            };
            self.random_file(format!("files/small-{i:02}.bin"), size)?;
        }
        let text = compressible_text(200 * 1024);
        self.file("files/text.txt", &text, 0o644)?;
        self.file("files/script.sh", b"#!/bin/sh\necho stash\n", 0o755)?;

        let large = self.path(LARGE_FILE);
        write_large_file(&large, self.opts.large_file_size, self.opts.seed)?;
        chmod(&large, 0o640)?;
        self.report.files += 1;

        let sparse = self.path(SPARSE_FILE);
        self.write_sparse_file(&sparse)?;
        chmod(&sparse, 0o600)?;
        self.report.files += 1;
        Ok(())
    }

    fn write_sparse_file(&mut self, path: &Path) -> io::Result<()> {
        let size = self.opts.sparse_file_size;
        let mut rng = self.rng("sparse");
        let file = File::create(path).map_err(at(path, "create"))?;
        file.set_len(size).map_err(at(path, "set_len"))?;
        let regions = [
            (0, 4096),
            (MIB + 123, 10),
            (size / 2, 64 * 1024),
            (size - 4096, 4096),
        ];
        for (offset, len) in regions {
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf);
            write_at(&file, &buf, offset).map_err(at(path, "write"))?;
        }
        let meta = file.metadata().map_err(at(path, "stat"))?;
        if meta.blocks() * 512 >= size {
            self.note(format!(
                "{SPARSE_FILE} is not sparse on this filesystem ({} blocks)",
                meta.blocks()
            ));
        }
        Ok(())
    }

    fn duplicates(&mut self) -> io::Result<()> {
        self.dir("dup", 0o755)?;
        self.dir("dup/nested", 0o755)?;
        let mut content = vec![0u8; (MIB + 4321) as usize];
        self.rng("dup").fill(&mut content);
        for rel in ["dup/one.bin", "dup/two.bin", "dup/nested/three.bin"] {
            self.file(rel, &content, 0o644)?;
        }
        // A small file with the same content as another small file.
        let text = self.path("files/text.txt");
        let text = fs::read(&text).map_err(at(&text, "read"))?;
        self.file("dup/text-copy.txt", &text, 0o644)?;
        Ok(())
    }

    fn symlinks(&mut self) -> io::Result<()> {
        self.dir("links", 0o755)?;
        self.symlink("links/dangling", "does/not/exist")?;
        self.symlink("links/to-file", "../files/small-00.bin")?;
        self.symlink("links/to-dir", "../files")?;
        self.symlink("links/to-link", "to-file")?;
        self.symlink("links/loop", "loop")?;
        self.symlink("links/absolute", "/nonexistent/stash-testkit/target")?;
        self.symlink("links/odd-target", "a \"quoted\"\ttarget\\with\nnewline")?;
        if self.opts.non_utf8 {
            self.symlink(
                NON_UTF8_SYMLINK,
                OsStr::from_bytes(b"target-\xff\xfe-bytes"),
            )?;
        }
        Ok(())
    }

    fn hard_links(&mut self) -> io::Result<()> {
        self.dir("hardlinks", 0o755)?;
        self.dir("hardlinks/a", 0o755)?;
        self.dir("hardlinks/b", 0o755)?;
        self.dir("hardlinks/c", 0o755)?;
        self.random_file(HARD_LINK_NAMES[0], 40 * 1024)?;
        self.hard_link(HARD_LINK_NAMES[0], HARD_LINK_NAMES[1])?;
        self.hard_link(HARD_LINK_NAMES[0], HARD_LINK_NAMES[2])?;
        self.file("hardlinks/empty-a", b"", 0o644)?;
        self.hard_link("hardlinks/empty-a", "hardlinks/c/empty-b")?;
        Ok(())
    }

    fn special(&mut self) -> io::Result<()> {
        self.dir("special", 0o755)?;
        self.fifo(FIFO, 0o644)?;
        self.fifo("special/private-fifo", 0o600)?;
        Ok(())
    }

    fn empty_dirs(&mut self) -> io::Result<()> {
        self.dir("empty", 0o755)?;
        self.dir("empty-tree", 0o755)?;
        self.dir("empty-tree/a", 0o755)?;
        self.dir("empty-tree/a/b", 0o750)?;
        self.dir("empty-tree/a/b/c", 0o755)?;
        self.dir("empty-tree/d", 0o711)?;
        Ok(())
    }

    fn deep(&mut self) -> io::Result<()> {
        let mut rel = PathBuf::from("deep");
        self.dir(&rel, 0o755)?;
        for level in 0..self.opts.depth {
            rel.push(format!("level-{level:02}"));
            self.dir(&rel, 0o755)?;
        }
        self.file(rel.join("leaf.txt"), b"at the bottom\n", 0o644)?;
        Ok(())
    }

    fn names(&mut self) -> io::Result<()> {
        self.dir("names", 0o755)?;
        let plain = [
            "double\"quote",
            "back\\slash",
            "new\nline",
            "tab\tname",
            "with space",
            " leading-space",
            "trailing-space ",
            "-starts-with-dash",
            ".hidden",
            "colon:semi;comma,",
            "percent-%s-%n-star*-question?",
            "ümlaut-ü",
            "emoji-🦀-🎉",
            "日本語のファイル",
            // The same visible name in NFC and NFD: two different files.
            "nfc-\u{fc}",
            "nfd-u\u{308}",
        ];
        for name in plain {
            let content = format!("file named {name:?}\n");
            self.file(Path::new("names").join(name), content.as_bytes(), 0o644)?;
        }
        let long: String = std::iter::once("long-")
            .chain(std::iter::repeat_n("x", 250))
            .collect();
        assert_eq!(long.len(), 255, "NAME_MAX");
        self.file(Path::new("names").join(&long), b"longest name\n", 0o644)?;
        self.dir("names/dir with \"quotes\" and ü", 0o755)?;
        self.file("names/dir with \"quotes\" and ü/inside", b"inside\n", 0o644)?;
        if self.opts.non_utf8 {
            let bad = Path::new("names").join(OsStr::from_bytes(b"bad-\xff\xfe-name"));
            self.file(&bad, b"name is not UTF-8\n", 0o644)?;
            // 0xc3 starts a two-byte sequence that '(' does not continue.
            let bad_dir = Path::new("names").join(OsStr::from_bytes(b"dir-\xc3\x28-bad"));
            self.dir(&bad_dir, 0o755)?;
            self.file(bad_dir.join("inside.txt"), b"in a non-UTF-8 dir\n", 0o644)?;
        }
        Ok(())
    }

    fn modes(&mut self) -> io::Result<()> {
        self.dir("modes", 0o755)?;
        self.file(SETUID_FILE, b"#!/bin/sh\n", 0o4755)?;
        self.file("modes/setgid", b"#!/bin/sh\n", 0o2755)?;
        self.file("modes/setuid-setgid", b"#!/bin/sh\n", 0o6755)?;
        self.file("modes/readonly", b"read only\n", 0o444)?;
        self.file("modes/group-writable", b"rw-rw-r--\n", 0o664)?;
        self.file("modes/exec-only", b"#!/bin/sh\n", 0o711)?;
        if self.is_root {
            // Unreadable to anyone but root; a non-root comparison could not
            // read it back.
            self.file("modes/no-perms", b"nobody may read this\n", 0o000)?;
        }
        self.dir("modes/sticky-dir", 0o1777)?;
        self.file("modes/sticky-dir/file", b"in a sticky dir\n", 0o666)?;
        self.dir("modes/private-dir", 0o700)?;
        self.file("modes/private-dir/secret", b"secret\n", 0o600)?;
        self.dir("modes/setgid-dir", 0o2775)?;
        self.file("modes/setgid-dir/file", b"in a setgid dir\n", 0o644)?;
        Ok(())
    }

    fn owned(&mut self) -> io::Result<()> {
        let (uid, gid) = self.opts.owner;
        let dir = self.dir("owned", 0o755)?;
        let file = self.file("owned/file", b"owned by someone else\n", 0o644)?;
        self.chown(&file, uid, gid)?;
        // chown before chmod, or the setuid bit is lost.
        let setuid = self.file("owned/setuid", b"#!/bin/sh\n", 0o4750)?;
        self.chown(&setuid, uid, gid)?;
        let only_gid = self.file("owned/only-gid", b"root user, other group\n", 0o640)?;
        self.chown(&only_gid, 0, gid)?;
        let link = self.symlink("owned/link", "file")?;
        self.chown(&link, uid + 1, gid + 1)?;
        let fifo = self.fifo("owned/fifo", 0o640)?;
        self.chown(&fifo, uid, gid)?;
        let sub = self.dir("owned/dir", 0o750)?;
        // A root-owned file inside a foreign-owned directory.
        self.file("owned/dir/child", b"child\n", 0o644)?;
        self.chown(&sub, uid, gid)?;
        self.chown(&dir, uid, gid)?;
        Ok(())
    }

    fn xattrs(&mut self) -> io::Result<()> {
        self.dir("xattrs", 0o755)?;
        let dir = self.dir(XATTR_DIR, 0o755)?;
        let file = self.file(XATTR_FILE, b"has extended attributes\n", 0o644)?;
        let attrs: [(&Path, &str, &[u8]); 5] = [
            (&file, "user.stash.plain", b"hello"),
            (&file, "user.stash.binary", b"\x00\x01\xff\xfe\n\"\\"),
            (&file, "user.stash.empty", b""),
            (&file, "user.stash.large", &[b'x'; 1024]),
            (&dir, "user.stash.dir", b"directory attribute"),
        ];
        for (path, name, value) in attrs {
            match xattr::set(path, name, value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.report.xattrs_supported = false;
                    self.note(format!(
                        "extended attributes not supported here ({e}): {XATTR_FILE} and {XATTR_DIR} have none"
                    ));
                    return Ok(());
                }
                Err(e) => return Err(at(path, "setxattr")(e)),
            }
        }
        Ok(())
    }

    /// Files whose timestamps are edge cases; their times come from
    /// [`special_mtime`].
    fn times_dir(&mut self) -> io::Result<()> {
        self.dir("times", 0o755)?;
        for (rel, _) in SPECIAL_TIMES {
            if rel.ends_with("-dir") {
                self.dir(rel, 0o755)?;
            } else {
                self.file(rel, rel.as_bytes(), 0o644)?;
            }
        }
        Ok(())
    }
}

/// Entries with edge-case mtimes: (relative path, (seconds, nanoseconds)).
const SPECIAL_TIMES: [(&str, (i64, u32)); 6] = [
    ("times/before-epoch", (-2, 500_000_000)),
    ("times/epoch", (0, 0)),
    ("times/whole-second", (1_234_567_890, 0)),
    ("times/after-2038", (2_500_000_000, 999_999_999)),
    ("times/year-2200", (7_258_118_400, 123_456_789)),
    ("times/1980-dir", (315_532_800, 1)),
];

fn special_mtime(rel: &Path) -> Option<FileTime> {
    SPECIAL_TIMES
        .iter()
        .find(|(p, _)| Path::new(p) == rel)
        .map(|(_, (s, ns))| FileTime::from_unix_time(*s, *ns))
}

/// Sets every entry's atime and mtime, children before their directory:
/// creating, renaming or removing an entry changes its directory's mtime.
/// A file with several names gets the times of the first name in walk
/// order.
fn set_all_times(root: &Path, seed: u64) -> io::Result<()> {
    let mut linked = HashSet::new();
    for entry in WalkDir::new(root).contents_first(true).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walkdir yields paths under its root");
        let meta = entry.metadata().map_err(io::Error::other)?;
        if meta.nlink() > 1 && !meta.is_dir() && !linked.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let (atime, mtime) = entry_times(seed, rel);
        // utimensat with AT_SYMLINK_NOFOLLOW: works for every file type and
        // never opens the entry (opening a FIFO would block).
        filetime::set_symlink_file_times(entry.path(), atime, mtime)
            .map_err(at(entry.path(), "set times"))?;
    }
    Ok(())
}

/// The (atime, mtime) of the entry at `rel`: from [`SPECIAL_TIMES`], or
/// drawn from the seed and the path, in 2001..2023 and never on a whole
/// second, so that lost nanoseconds show.
fn entry_times(seed: u64, rel: &Path) -> (FileTime, FileTime) {
    let mut rng = SplitMix64::derive(seed, rel.as_os_str().as_bytes());
    let secs = 1_000_000_000 + rng.below(700_000_000) as i64;
    let mtime = special_mtime(rel)
        .unwrap_or_else(|| FileTime::from_unix_time(secs, 1 + rng.below(999_999_999) as u32));
    let atime = FileTime::from_unix_time(
        secs + rng.below(1_000_000) as i64,
        1 + rng.below(999_999_999) as u32,
    );
    (atime, mtime)
}

/// Writes the large file: a repeating pattern of 1 MiB blocks, random,
/// random, compressible text, and half random half zeros.
fn write_large_file(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut rng = SplitMix64::derive(seed, b"large");
    let text = compressible_text(BLOCK);
    let mut file = File::create(path).map_err(at(path, "create"))?;
    let mut buf = vec![0u8; BLOCK];
    let mut written = 0u64;
    let mut block = 0u64;
    while written < size {
        let n = (size - written).min(BLOCK as u64) as usize;
        match block % 4 {
            2 => buf[..n].copy_from_slice(&text[..n]),
            3 => {
                let half = n / 2;
                rng.fill(&mut buf[..half]);
                buf[half..n].fill(0);
            }
            _ => rng.fill(&mut buf[..n]),
        }
        file.write_all(&buf[..n]).map_err(at(path, "write"))?;
        written += n as u64;
        block += 1;
    }
    Ok(())
}

/// `len` bytes of numbered lines of prose: compresses well, but is not one
/// repeated byte.
fn compressible_text(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 128);
    let mut line = 0u64;
    while text.len() < len {
        text.extend_from_slice(
            format!("{line:08} The quick brown fox jumps over the lazy dog; stash backs it up.\n")
                .as_bytes(),
        );
        line += 1;
    }
    text.truncate(len);
    text
}

fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(at(path, "chmod"))
}

/// Adds the operation and path to an I/O error.
fn at<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(io::Error) -> io::Error + 'p {
    move |e| io::Error::new(e.kind(), format!("{op} {path:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{compare_trees, CompareOptions, DifferenceKind};
    use std::collections::HashMap;
    use std::os::unix::fs::FileTypeExt;

    fn lstat(path: &Path) -> fs::Metadata {
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"))
    }

    #[test]
    fn small_tree_has_every_kind_of_entry() {
        let tmp = crate::tempdir();
        let root = tmp.path().join("tree");
        let opts = FixtureOptions::small();
        let report = build_tree(&root, &opts).unwrap();
        let is_root = nix::unistd::geteuid().is_root();
        assert_eq!(report.chown_done, is_root, "{report:?}");
        assert!(
            report.xattrs_supported,
            "the temporary directory's filesystem refuses user.* xattrs; \
             run the tests with TMPDIR on ext4, xfs, btrfs or tmpfs: {report:?}"
        );
        assert!(report.files > 40 && report.dirs > 40, "{report:?}");
        assert_eq!(report.fifos, 3, "{report:?}");
        assert!(report.symlinks >= 8, "{report:?}");

        assert_eq!(lstat(&root.join("files/empty.txt")).len(), 0);
        assert_eq!(lstat(&root.join(LARGE_FILE)).len(), opts.large_file_size);

        let sparse = lstat(&root.join(SPARSE_FILE));
        assert_eq!(sparse.len(), opts.sparse_file_size);
        assert!(
            sparse.blocks() * 512 < sparse.len() / 4,
            "not sparse: {sparse:?}"
        );

        let inodes: Vec<_> = HARD_LINK_NAMES
            .iter()
            .map(|rel| {
                let m = lstat(&root.join(rel));
                assert_eq!(m.nlink(), 3, "{rel}");
                (m.dev(), m.ino())
            })
            .collect();
        assert!(inodes.iter().all(|i| *i == inodes[0]));

        assert!(lstat(&root.join(FIFO)).file_type().is_fifo());
        assert_eq!(
            fs::read_link(root.join(NON_UTF8_SYMLINK))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"target-\xff\xfe-bytes"
        );
        assert!(!root.join("links/dangling").exists());
        assert!(root.join("links/to-dir").is_dir());
        assert!(lstat(
            &root
                .join("names")
                .join(OsStr::from_bytes(b"bad-\xff\xfe-name"))
        )
        .is_file());
        assert!(lstat(&root.join("names/new\nline")).is_file());
        assert!(lstat(&root.join("names/emoji-🦀-🎉")).is_file());

        let leaf = WalkDir::new(root.join("deep"))
            .into_iter()
            .map(Result::unwrap)
            .find(|e| e.file_name() == "leaf.txt")
            .expect("deep/.../leaf.txt");
        assert!(leaf.depth() > 30, "depth {}", leaf.depth());

        for (rel, mode) in [
            (SETUID_FILE, 0o4755),
            ("modes/setgid", 0o2755),
            ("modes/sticky-dir", 0o1777),
            ("modes/readonly", 0o444),
            ("modes/private-dir", 0o700),
            ("owned/setuid", 0o4750),
        ] {
            assert_eq!(lstat(&root.join(rel)).mode() & 0o7777, mode, "{rel}");
        }

        if is_root {
            let (uid, gid) = opts.owner;
            for (rel, owner) in [
                ("owned/file", (uid, gid)),
                ("owned/setuid", (uid, gid)),
                ("owned/dir", (uid, gid)),
                ("owned/link", (uid + 1, gid + 1)),
                ("owned/only-gid", (0, gid)),
                ("owned/dir/child", (0, 0)),
            ] {
                let m = lstat(&root.join(rel));
                assert_eq!((m.uid(), m.gid()), owner, "{rel}");
            }
        }

        assert_eq!(
            xattr::get(root.join(XATTR_FILE), "user.stash.binary").unwrap(),
            Some(b"\x00\x01\xff\xfe\n\"\\".to_vec())
        );
        assert_eq!(
            xattr::get(root.join(XATTR_DIR), "user.stash.dir").unwrap(),
            Some(b"directory attribute".to_vec())
        );
    }

    /// Every timestamp is the one the fixture chose: nothing created after
    /// setting it (a child in a directory, say) disturbed it.
    #[test]
    fn timestamps_are_exactly_as_chosen() {
        let tmp = crate::tempdir();
        let opts = FixtureOptions::small();
        build_tree(tmp.path(), &opts).unwrap();
        let mut whole_seconds = 0;
        // The first name of a hard-linked file, in walk order, gives it its times.
        let mut first_name: HashMap<u64, PathBuf> = HashMap::new();
        for entry in WalkDir::new(tmp.path())
            .contents_first(true)
            .sort_by_file_name()
        {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(tmp.path()).unwrap();
            let meta = entry.metadata().unwrap();
            let name = first_name
                .entry(meta.ino())
                .or_insert_with(|| rel.to_path_buf());
            let (_, mtime) = entry_times(opts.seed, name);
            assert_eq!(
                (meta.mtime(), meta.mtime_nsec()),
                (mtime.unix_seconds(), i64::from(mtime.nanoseconds())),
                "{rel:?}"
            );
            if meta.mtime_nsec() == 0 {
                whole_seconds += 1;
            }
        }
        assert_eq!(whole_seconds, 2, "only times/epoch and times/whole-second");
        let before = lstat(&tmp.path().join("times/before-epoch"));
        assert_eq!((before.mtime(), before.mtime_nsec()), (-2, 500_000_000));
    }

    #[test]
    fn same_seed_builds_equal_trees_and_another_seed_does_not() {
        let tmp = crate::tempdir();
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        let opts = FixtureOptions::small();
        build_tree(&a, &opts).unwrap();
        build_tree(&b, &opts).unwrap();
        crate::compare::assert_trees_equal(&a, &b, &CompareOptions::default());

        let other = FixtureOptions {
            seed: opts.seed + 1,
            ..opts
        };
        build_tree(&c, &other).unwrap();
        let diffs = compare_trees(&a, &c, &CompareOptions::default());
        assert!(diffs
            .iter()
            .any(|d| d.path == Path::new(LARGE_FILE)
                && matches!(d.kind, DifferenceKind::Content { .. })));
        assert!(diffs
            .iter()
            .any(|d| matches!(d.kind, DifferenceKind::Mtime { .. })));
    }

    #[test]
    fn write_random_file_is_deterministic_and_seeded() {
        let tmp = crate::tempdir();
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        let size = 3 * BLOCK as u64 + 17;
        write_random_file(&a, size, 9).unwrap();
        write_random_file(&b, size, 9).unwrap();
        write_random_file(&c, size, 10).unwrap();
        let (a, b, c) = (
            fs::read(a).unwrap(),
            fs::read(b).unwrap(),
            fs::read(c).unwrap(),
        );
        assert_eq!(a.len() as u64, size);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn modify_some_files_changes_the_files_it_reports() {
        let tmp = crate::tempdir();
        let (orig, copy) = (tmp.path().join("orig"), tmp.path().join("copy"));
        let opts = FixtureOptions::small();
        build_tree(&orig, &opts).unwrap();
        build_tree(&copy, &opts).unwrap();
        let changed = modify_some_files(&copy, 3, 0.25).unwrap();
        let files = WalkDir::new(&copy)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().unwrap().ino())
            .collect::<HashSet<_>>()
            .len();
        assert_eq!(changed.len(), (files as f64 * 0.25).round() as usize);
        assert_eq!(
            changed,
            modify_some_files(&orig, 3, 0.25).unwrap(),
            "same seed, same choice"
        );
        // Both trees had the same change: they are equal but for mtimes.
        let no_mtime = CompareOptions {
            check_mtime: false,
            ..CompareOptions::default()
        };
        crate::compare::assert_trees_equal(&orig, &copy, &no_mtime);

        let fresh = tmp.path().join("fresh");
        build_tree(&fresh, &opts).unwrap();
        let diffs = compare_trees(&fresh, &copy, &no_mtime);
        let content_changed: Vec<&Path> = diffs
            .iter()
            .filter(|d| {
                matches!(
                    d.kind,
                    DifferenceKind::Content { .. } | DifferenceKind::Size { .. }
                )
            })
            .map(|d| d.path.as_path())
            .collect();
        for rel in &changed {
            assert!(
                content_changed.contains(&rel.as_path()),
                "{rel:?} unchanged: {diffs:#?}"
            );
        }
        // Anything else that changed is another name of a changed file.
        for rel in &content_changed {
            let ino = lstat(&copy.join(rel)).ino();
            assert!(
                changed.iter().any(|c| lstat(&copy.join(c)).ino() == ino),
                "{rel:?} changed but was not reported"
            );
        }
        // Only content and mtimes changed, never modes.
        assert!(
            diffs.iter().all(|d| matches!(
                d.kind,
                DifferenceKind::Content { .. } | DifferenceKind::Size { .. }
            )),
            "{diffs:#?}"
        );
    }
}
