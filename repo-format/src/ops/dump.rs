//! Dump: one file of a snapshot as a byte stream, or a directory as a tar
//! or zip archive, as restic's `dump` writes them.
//!
//! - A file is written as its content, blob by blob (a few blobs are
//!   fetched ahead in parallel; memory stays bounded whatever its size).
//! - A directory is written as an archive of everything below it, each
//!   entry named by its full path in the snapshot without the leading `/`
//!   (`srv/data/a.txt`), as restic names them. The tree is walked with an
//!   explicit stack, so a crafted snapshot's depth cannot exhaust ours.
//!
//! Snapshot contents are hostile input (whoever holds the password can
//! write any snapshot): every name is checked to be one path component
//! (no `/`, not `.` or `..`), so no archive we write can name a place
//! outside the directory it is unpacked in, and a file's content must have
//! exactly the size its node claims, or the dump stops with an error
//! rather than write an archive whose entries run into each other.

use std::io::{self, Read, Write};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::id::Id;
use crate::format::repofile::tree::gomode;
use crate::format::repofile::{BlobType, Node, NodeType};
use crate::repository::Repository;

/// Blobs of one file fetched ahead of the one being written.
const AHEAD: usize = 8;

/// The archive format of a dumped directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Archive {
    /// POSIX tar (GNU extensions for long names, PAX for extended attributes).
    #[default]
    Tar,
    /// zip (deflate).
    Zip,
}

impl std::str::FromStr for Archive {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Archive, String> {
        match s {
            "tar" => Ok(Archive::Tar),
            "zip" => Ok(Archive::Zip),
            _ => Err(format!("unknown archive format {s:?}: use tar or zip")),
        }
    }
}

/// What `path` (absolute, `/` separated) names in the tree `root`, with
/// its path in the snapshot; `/` is the root itself, as a directory.
pub fn lookup(repo: &Repository, root: &Id, path: &str) -> Result<(String, Node)> {
    let mut node = Node::new(Vec::new(), NodeType::Dir);
    node.mode = gomode::DIR | 0o755;
    node.subtree = Some(*root);
    let mut shown = String::new();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            return Err(Error::InvalidArgument(format!(
                "path {path:?}: `..` is not allowed"
            )));
        }
        let Some(sub) = node.subtree.filter(|_| node.node_type == NodeType::Dir) else {
            return Err(Error::InvalidArgument(format!(
                "path {path:?}: {shown:?} is a {}, not a directory",
                node.node_type.as_str()
            )));
        };
        let tree = repo.load_tree(&sub)?;
        node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == c.as_bytes())
            .ok_or_else(|| Error::NotFound {
                location: format!("path {:?} in the snapshot", format!("{shown}/{c}")),
            })?;
        shown = format!("{shown}/{c}");
    }
    if shown.is_empty() {
        shown.push('/');
    }
    Ok((shown, node))
}

/// Writes the content of the regular file `node` to `w`.
pub fn dump_file(repo: &Repository, node: &Node, w: &mut dyn Write) -> Result<()> {
    if node.node_type != NodeType::File {
        return Err(Error::InvalidArgument(format!(
            "{:?} is a {}, not a file (a directory is dumped as an archive)",
            String::from_utf8_lossy(&node.name),
            node.node_type.as_str()
        )));
    }
    let mut r = ContentReader::new(repo, node);
    io::copy(&mut r, w).map_err(|e| unwrap_io(e, "writing the file"))?;
    Ok(())
}

/// Writes the directory `dir` (found at `path` by [`lookup`]) and
/// everything below it to `w` as an archive.
pub fn dump_archive(
    repo: &Repository,
    path: &str,
    dir: &Node,
    format: Archive,
    w: &mut dyn Write,
) -> Result<()> {
    if dir.node_type != NodeType::Dir {
        return Err(Error::InvalidArgument(format!(
            "{path:?} is a {}, not a directory",
            dir.node_type.as_str()
        )));
    }
    let mut out: Box<dyn ArchiveWriter + '_> = match format {
        Archive::Tar => Box::new(TarOut(tar::Builder::new(w))),
        Archive::Zip => Box::new(ZipOut(zip::ZipWriter::new_stream(w))),
    };
    let prefix = path.trim_start_matches('/').as_bytes().to_vec();
    // Pre-order, in name order (trees are sorted): a directory comes
    // before what it holds. One list of entries per open directory.
    let mut stack = Vec::new();
    if let Some(t) = dir.subtree {
        stack.push(children(repo, &prefix, &t)?);
    }
    while let Some(level) = stack.last_mut() {
        let Some((name, node)) = level.next() else {
            stack.pop();
            continue;
        };
        out.entry(repo, &name, &node)?;
        if let (NodeType::Dir, Some(t)) = (node.node_type, node.subtree) {
            stack.push(children(repo, &name, &t)?);
        }
    }
    out.finish()
}

/// The entries of the tree `id`, each with its full name below `dir`.
fn children(repo: &Repository, dir: &[u8], id: &Id) -> Result<std::vec::IntoIter<(Vec<u8>, Node)>> {
    let tree = repo.load_tree(id)?;
    let mut level = Vec::with_capacity(tree.nodes.len());
    for n in tree.nodes {
        Node::check_name(&n.name).map_err(|why| {
            Error::format(
                "tree",
                format!(
                    "tree {id} has the entry name {:?}: {why}",
                    String::from_utf8_lossy(&n.name)
                ),
            )
        })?;
        let mut full = dir.to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(&n.name);
        level.push((full, n));
    }
    Ok(level.into_iter())
}

/// One archive format.
trait ArchiveWriter {
    fn entry(&mut self, repo: &Repository, name: &[u8], node: &Node) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<()>;
}

fn io_err(e: io::Error) -> Error {
    unwrap_io(e, "writing the archive")
}

/// An I/O error from [`ContentReader`] carries the repository's error;
/// anything else is the output's.
fn unwrap_io(e: io::Error, what: &str) -> Error {
    if e.get_ref().is_some_and(|i| i.is::<Error>()) {
        return *e
            .into_inner()
            .expect("inner")
            .downcast::<Error>()
            .expect("checked");
    }
    Error::InvalidArgument(format!("{what}: {e}"))
}

struct TarOut<W: Write>(tar::Builder<W>);

impl<W: Write> TarOut<W> {
    /// A PAX extended header for the next entry (extended attributes as
    /// `SCHILY.xattr.NAME`, the records GNU tar and restic use).
    fn pax(&mut self, node: &Node) -> io::Result<()> {
        if node.extended_attributes.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for x in &node.extended_attributes {
            let mut rec = format!(" SCHILY.xattr.{}=", x.name).into_bytes();
            rec.extend_from_slice(&x.value);
            rec.push(b'\n');
            // The length counts its own digits.
            let mut len = rec.len() + 1;
            while len.to_string().len() + rec.len() != len {
                len = len.to_string().len() + rec.len();
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.extend_from_slice(&rec);
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeader")?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.0.append(&h, data.as_slice())
    }
}

fn tar_header(node: &Node, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(gomode::to_unix_perm(node.mode));
    h.set_uid(node.uid.into());
    h.set_gid(node.gid.into());
    // Names that do not fit are left out, not cut (ids are in the header).
    let _ = h.set_username(&node.user);
    let _ = h.set_groupname(&node.group);
    h.set_mtime(node.mtime.timestamp().max(0) as u64);
    h.set_size(0);
    h
}

fn os_path(name: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(name))
}

impl<W: Write> ArchiveWriter for TarOut<W> {
    fn entry(&mut self, repo: &Repository, name: &[u8], node: &Node) -> Result<()> {
        let kind = match node.node_type {
            NodeType::Dir => tar::EntryType::Directory,
            NodeType::File => tar::EntryType::Regular,
            NodeType::Symlink => tar::EntryType::Symlink,
            NodeType::Dev => tar::EntryType::Block,
            NodeType::Chardev => tar::EntryType::Char,
            NodeType::Fifo => tar::EntryType::Fifo,
            // Sockets and irregular files have no tar entry (restic
            // leaves them out as well).
            _ => {
                tracing::warn!(path = %String::from_utf8_lossy(name), kind = node.node_type.as_str(), "not archived");
                return Ok(());
            }
        };
        self.pax(node).map_err(io_err)?;
        let mut h = tar_header(node, kind);
        let path = os_path(name);
        match node.node_type {
            NodeType::Dir => {
                // restic (Go's tar) names a directory `dir/`; the tar crate
                // drops the slash from a path, so a name that fits the
                // header is written as bytes (a longer one goes without).
                let mut with_slash = name.to_vec();
                with_slash.push(b'/');
                let field = &mut h.as_old_mut().name;
                if with_slash.len() <= field.len() {
                    field.fill(0);
                    field[..with_slash.len()].copy_from_slice(&with_slash);
                    h.set_cksum();
                    self.0.append(&h, io::empty()).map_err(io_err)
                } else {
                    self.0
                        .append_data(&mut h, path, io::empty())
                        .map_err(io_err)
                }
            }
            NodeType::File => {
                h.set_size(node.size);
                let content = ContentReader::new(repo, node);
                self.0.append_data(&mut h, path, content).map_err(io_err)
            }
            NodeType::Symlink => self
                .0
                .append_link(&mut h, path, os_path(&node.link_target))
                .map_err(io_err),
            _ => {
                let dev = node.device;
                let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
                let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
                h.set_device_major(major as u32).map_err(io_err)?;
                h.set_device_minor(minor as u32).map_err(io_err)?;
                self.0
                    .append_data(&mut h, path, io::empty())
                    .map_err(io_err)
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.finish().map_err(io_err)?;
        self.0.get_mut().flush().map_err(io_err)
    }
}

/// zip's local time (1980–2107, two-second steps); out of range gives
/// zip's default (1980-01-01).
fn zip_time(t: &chrono::DateTime<chrono::FixedOffset>) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    let t = t.naive_local();
    u16::try_from(t.year())
        .ok()
        .and_then(|y| {
            zip::DateTime::from_date_and_time(
                y,
                t.month() as u8,
                t.day() as u8,
                t.hour() as u8,
                t.minute() as u8,
                t.second().min(58) as u8,
            )
            .ok()
        })
        .unwrap_or_default()
}

struct ZipOut<W: Write>(zip::ZipWriter<zip::write::StreamWriter<W>>);

fn zip_err(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(e) => io_err(e),
        e => Error::InvalidArgument(format!("writing the archive: {e}")),
    }
}

impl<W: Write> ArchiveWriter for ZipOut<W> {
    fn entry(&mut self, repo: &Repository, name: &[u8], node: &Node) -> Result<()> {
        let name = match std::str::from_utf8(name) {
            Ok(n) => n.to_string(),
            Err(_) => {
                // zip names are UTF-8 here; tar keeps any bytes.
                let n = String::from_utf8_lossy(name).into_owned();
                tracing::warn!(path = %n, "name is not UTF-8; stored with replacement characters (use --archive tar to keep it)");
                n
            }
        };
        let mtime = zip_time(&node.mtime);
        let opts = zip::write::SimpleFileOptions::default()
            .last_modified_time(mtime)
            .unix_permissions(gomode::to_unix_perm(node.mode));
        match node.node_type {
            NodeType::Dir => self.0.add_directory(name, opts).map_err(zip_err),
            NodeType::File => {
                let opts = opts
                    .compression_method(zip::CompressionMethod::Deflated)
                    .large_file(node.size >= u32::MAX as u64);
                self.0.start_file(name, opts).map_err(zip_err)?;
                let mut content = ContentReader::new(repo, node);
                io::copy(&mut content, &mut self.0).map_err(io_err)?;
                Ok(())
            }
            NodeType::Symlink => {
                let target = String::from_utf8_lossy(&node.link_target).into_owned();
                self.0.add_symlink(name, target, opts).map_err(zip_err)
            }
            _ => {
                tracing::warn!(path = %name, kind = node.node_type.as_str(), "zip has no entry for this kind; not archived");
                Ok(())
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut w = self.0.finish().map_err(zip_err)?.into_inner();
        w.flush().map_err(io_err)
    }
}

/// The content of a file node as a reader: blobs in order, a few fetched
/// ahead in parallel, and exactly `node.size` bytes or an error.
struct ContentReader<'a> {
    repo: &'a Repository,
    name: String,
    ids: &'a [Id],
    next: usize,
    ready: std::collections::VecDeque<Vec<u8>>,
    pos: usize,
    want: u64,
    given: u64,
}

impl<'a> ContentReader<'a> {
    fn new(repo: &'a Repository, node: &'a Node) -> ContentReader<'a> {
        ContentReader {
            repo,
            name: String::from_utf8_lossy(&node.name).into_owned(),
            ids: node.content.as_deref().unwrap_or(&[]),
            next: 0,
            ready: Default::default(),
            pos: 0,
            want: node.size,
            given: 0,
        }
    }

    fn fail(&self, e: Error) -> io::Error {
        io::Error::other(e)
    }

    fn size_error(&self, have: &str) -> io::Error {
        self.fail(Error::format(
            "tree",
            format!(
                "file {:?}: its node says {} bytes, its content has {have}",
                self.name, self.want
            ),
        ))
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(front) = self.ready.front() {
                if self.pos < front.len() {
                    let n = buf.len().min(front.len() - self.pos);
                    buf[..n].copy_from_slice(&front[self.pos..self.pos + n]);
                    self.pos += n;
                    self.given += n as u64;
                    if self.given > self.want {
                        return Err(self.size_error("more"));
                    }
                    return Ok(n);
                }
                self.ready.pop_front();
                self.pos = 0;
                continue;
            }
            if self.next == self.ids.len() {
                if self.given != self.want {
                    return Err(self.size_error(&format!("{}", self.given)));
                }
                return Ok(0);
            }
            let end = (self.next + AHEAD).min(self.ids.len());
            let repo = self.repo;
            let loaded: Vec<Result<Vec<u8>>> = self.ids[self.next..end]
                .par_iter()
                .map(|id| repo.load_blob(BlobType::Data, id))
                .collect();
            self.next = end;
            for b in loaded {
                self.ready.push_back(b.map_err(|e| self.fail(e))?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_formats_parse() {
        assert_eq!("tar".parse::<Archive>(), Ok(Archive::Tar));
        assert_eq!("zip".parse::<Archive>(), Ok(Archive::Zip));
        assert!("7z".parse::<Archive>().unwrap_err().contains("tar or zip"));
    }
}
