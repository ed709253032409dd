//! File system access beneath a directory file descriptor.
//!
//! Backup reads, and restore writes, directories that a running pod may
//! change at the same moment: it can swap a directory for a symlink to the
//! host's `/` (`renameat2(RENAME_EXCHANGE)`) between two of our calls. A
//! path resolved twice can lead somewhere else the second time, so nothing
//! here takes a path below the directory the caller opened: every call is
//! one name, relative to an open directory fd, and never follows a symlink
//! in that name. A walk that opens each directory this way
//! (`openat(parent, name, O_DIRECTORY|O_NOFOLLOW)`) can only ever reach
//! what is really below its root: a swapped-in symlink makes the open fail
//! (`ELOOP`/`ENOTDIR`) instead of leading out.
//!
//! With single names `openat` with `O_NOFOLLOW` is exactly as strong as
//! `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)` (there are no
//! intermediate components to resolve, and `.`, `..` and `/` are refused
//! here) and works on every kernel, so we do not need openat2.
//!
//! We use rustix rather than cap-std: cap-std's `Dir` hides the fd calls we
//! need (`O_PATH`, `fstatat` with `AT_SYMLINK_NOFOLLOW` returning the raw
//! `stat`, `f*xattr`, `mknodat`, `linkat`), rustix gives exactly the
//! system calls as safe functions (the workspace forbids `unsafe`), and it
//! is already in the dependency tree.
//!
//! Two operations have no fd form for every file type: `chmod` and the
//! xattr calls on FIFOs, devices and symlinks (an `O_PATH` fd refuses
//! `fchmod` and `fsetxattr`, opening a FIFO or device for real has side
//! effects). For those we open the entry with `O_PATH|O_NOFOLLOW`, check
//! with `fstat` that it is the inode we expect, and name it as
//! `/proc/self/fd/N`: that magic link resolves to the very inode of the fd,
//! not to whatever a name points to now.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

/// Refuses anything but a single, plain name: defence in depth, callers
/// check names from repositories already.
fn one_name(name: &[u8]) -> io::Result<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a single file name: {:?}",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    Ok(OsStr::from_bytes(name))
}

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// Opens a directory the caller names by path (a backup target's parent,
/// a restore target): the one place a path is resolved, for directories
/// the user or the agent chose, not the tenant.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Opens the directory `name` in `dir`, refusing a symlink there.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        one_name(name)?,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Opens the entry `name` in `dir` for reading, refusing a symlink.
/// `O_NONBLOCK` keeps a FIFO swapped in for a file from blocking us;
/// `O_NOATIME` (refused for files we do not own) keeps atimes.
pub fn open_read_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let n = one_name(name)?;
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    match rustix::fs::openat(dir, n, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, n, base, Mode::empty()),
        r => r,
    }
    .map_err(io_err)
}

/// Opens the entry `name` in `dir` for writing (and reading, if `read`),
/// refusing a symlink; never creates.
pub fn open_write_at(dir: BorrowedFd<'_>, name: &[u8], read: bool) -> io::Result<OwnedFd> {
    let access = if read { OFlags::RDWR } else { OFlags::WRONLY };
    rustix::fs::openat(
        dir,
        one_name(name)?,
        access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Creates the regular file `name` in `dir`; fails if anything is there.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        one_name(name)?,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io_err)
}

/// An `O_PATH` handle on `name` in `dir` (the entry itself, even a
/// symlink, without opening it for I/O).
pub fn open_path_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        one_name(name)?,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
    rustix::fs::statat(dir, one_name(name)?, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)
}

/// `fstat`.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    rustix::fs::fstat(fd).map_err(io_err)
}

/// `readlinkat(dir, name)`.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    rustix::fs::readlinkat(dir, one_name(name)?, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(io_err)
}

/// The names in a directory (without `.` and `..`).
pub fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut d = rustix::fs::Dir::read_from(dir).map_err(io_err)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(io_err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// The file type bits of a `stat`.
pub fn kind(st: &Stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// Whether `st` is still the inode `(dev, ino)`.
pub fn same_inode(st: &Stat, dev: u64, ino: u64) -> bool {
    st.st_dev == dev && st.st_ino == ino
}

/// The name of an fd's own inode in procfs (see the module comment).
pub fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn split_names(list: &[u8]) -> Vec<String> {
    list.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// Every extended attribute of an open file or directory, sorted by name.
/// File systems without xattrs give none.
pub fn xattrs_fd(fd: BorrowedFd<'_>) -> Vec<(String, Vec<u8>)> {
    let names = match rustix::fs::flistxattr_query(fd) {
        Ok(0) | Err(_) => return Vec::new(),
        Ok(n) => {
            let mut buf = vec![0u8; n];
            match rustix::fs::flistxattr(fd, &mut buf[..]) {
                Ok(len) => split_names(&buf[..len]),
                Err(_) => return Vec::new(),
            }
        }
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .filter_map(|n| {
            let len = rustix::fs::fgetxattr_query(fd, n.as_str()).ok()?;
            let mut v = vec![0u8; len];
            let got = rustix::fs::fgetxattr(fd, n.as_str(), &mut v[..]).ok()?;
            v.truncate(got);
            Some((n, v))
        })
        .collect();
    out.sort();
    out
}

/// Every extended attribute of the inode behind an `O_PATH` fd (a
/// symlink, FIFO or device), through `/proc/self/fd`; none without procfs.
pub fn xattrs_opath(fd: BorrowedFd<'_>) -> Vec<(String, Vec<u8>)> {
    let p = proc_path(fd);
    let names = match rustix::fs::listxattr_query(&p) {
        Ok(0) | Err(_) => return Vec::new(),
        Ok(n) => {
            let mut buf = vec![0u8; n];
            match rustix::fs::listxattr(&p, &mut buf[..]) {
                Ok(len) => split_names(&buf[..len]),
                Err(_) => return Vec::new(),
            }
        }
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .filter_map(|n| {
            let len = rustix::fs::getxattr_query(&p, n.as_str()).ok()?;
            let mut v = vec![0u8; len];
            let got = rustix::fs::getxattr(&p, n.as_str(), &mut v[..]).ok()?;
            v.truncate(got);
            Some((n, v))
        })
        .collect();
    out.sort();
    out
}

/// Sets an xattr on an open file or directory.
pub fn set_xattr_fd(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()).map_err(io_err)
}

/// Sets an xattr on the inode behind an `O_PATH` fd.
pub fn set_xattr_opath(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::setxattr(proc_path(fd), name, value, rustix::fs::XattrFlags::empty())
        .map_err(io_err)
}

/// chmod of the inode behind an `O_PATH` fd (never a symlink: callers
/// check the type first, and Linux has no symlink modes).
pub fn chmod_opath(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::chmod(proc_path(fd), Mode::from_raw_mode(mode)).map_err(io_err)
}

/// `fchmod`.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io_err)
}

/// `fchown`.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(io_err)
}

/// `fchownat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself.
pub fn chown_at(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        one_name(name)?,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io_err)
}

fn timestamps(atime: (i64, u32), mtime: (i64, u32)) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1.into(),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1.into(),
        },
    }
}

/// `futimens`.
pub fn set_times_fd(fd: BorrowedFd<'_>, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    rustix::fs::futimens(fd, &timestamps(atime, mtime)).map_err(io_err)
}

/// `utimensat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself.
pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    rustix::fs::utimensat(
        dir,
        one_name(name)?,
        &timestamps(atime, mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io_err)
}

/// `mkdirat` with mode 0700 (the real mode is applied last).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rustix::fs::mkdirat(dir, one_name(name)?, Mode::from_raw_mode(0o700)).map_err(io_err)
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, one_name(name)?).map_err(io_err)
}

/// `mknodat` for FIFOs and devices, mode 0600.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &[u8], ifmt: u32, dev: u64) -> io::Result<()> {
    let ft = rustix::fs::FileType::from_raw_mode(ifmt);
    rustix::fs::mknodat(dir, one_name(name)?, ft, Mode::from_raw_mode(0o600), dev).map_err(io_err)
}

/// `linkat(from_dir, from, to_dir, to, 0)`: never follows a symlink at `from`.
pub fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    rustix::fs::linkat(
        from_dir,
        one_name(from)?,
        to_dir,
        one_name(to)?,
        AtFlags::empty(),
    )
    .map_err(io_err)
}

/// Removes the non-directory `name` from `dir`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rustix::fs::unlinkat(dir, one_name(name)?, AtFlags::empty()).map_err(io_err)
}

/// Removes the empty directory `name` from `dir`.
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rustix::fs::unlinkat(dir, one_name(name)?, AtFlags::REMOVEDIR).map_err(io_err)
}

/// Removes `name` and everything below it, walking by fds (a symlink is
/// removed, never followed).
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = stat_at(dir, name)?;
    if kind(&st) != libc::S_IFDIR {
        return unlink_at(dir, name);
    }
    let sub = open_dir_at(dir, name)?;
    for n in list_names(sub.as_fd())? {
        remove_all_at(sub.as_fd(), &n)?;
    }
    rmdir_at(dir, name)
}

/// Raises the soft limit of open files to the hard limit: a restore keeps
/// one fd per restored directory until its metadata is applied.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}
