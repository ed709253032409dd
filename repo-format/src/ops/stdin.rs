//! Backup of one stream (standard input, or a command's standard output)
//! as a single file: restic's `backup --stdin` and `--stdin-from-command`.
//!
//! The snapshot is laid out as restic lays it out, so that `restic dump`
//! and `restic restore` read it: the stream becomes the regular file
//! `NAME` (`stdin` by default; `dir/name` gives intermediate directories),
//! mode `0644`, owned by this process's user, with the snapshot's time as
//! its times; the snapshot's path is `/NAME`, and it has no parent (restic
//! ≥ 0.15: a parent only lets a backup skip unchanged files by their
//! metadata, which a stream does not have).
//!
//! The stream is chunked and deduplicated like any file, in memory bounded
//! by the chunker's block and an 8 MiB read-ahead, whatever its length. A stream that cannot be
//! read to its end — including a command that exits with an error, which
//! the reader reports at the end of its output — writes no snapshot.

use std::io::Read;

use chrono::{DateTime, FixedOffset};

use crate::error::{Error, Result};
use crate::format::repofile::tree::gomode;
use crate::format::repofile::{BlobType, Node, NodeType, Snapshot, SnapshotSummary, Tree};
use crate::ops::backup::{save_content, BackupResult, ContentError};
use crate::ops::progress::Progress;
use crate::repository::{whoami, Repository};

/// How to label a stream's snapshot.
#[derive(Debug, Clone, Default)]
pub struct StdinOptions {
    /// The file name in the snapshot (`stdin` when empty); `/` separates
    /// directories. `.` and empty components are dropped; `..` is refused.
    pub filename: String,
    /// What the stream is, for messages (`standard input`, a command).
    pub source_name: String,
    /// Host name for the snapshot (defaults to this host).
    pub host: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Snapshot time (defaults to now).
    pub time: Option<DateTime<FixedOffset>>,
}

/// The components of a `--stdin-filename`.
pub fn filename_components(name: &str) -> Result<Vec<String>> {
    let name = if name.is_empty() { "stdin" } else { name };
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::InvalidArgument(format!(
                    "--stdin-filename {name:?}: `..` is not allowed"
                )))
            }
            c if c.contains('\0') => {
                return Err(Error::InvalidArgument(format!(
                    "--stdin-filename {name:?}: contains a NUL byte"
                )))
            }
            c => out.push(c.to_string()),
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "--stdin-filename {name:?}: names no file"
        )));
    }
    Ok(out)
}

/// Backs up what `reader` yields as the file `opts.filename` and writes
/// the snapshot. The repository's index must be loaded.
pub fn backup_stdin(
    repo: &Repository,
    reader: impl Read + Send + 'static,
    opts: &StdinOptions,
    progress: &Progress,
) -> Result<BackupResult> {
    let components = filename_components(&opts.filename)?;
    let start = chrono::Local::now().fixed_offset();
    let time = opts.time.unwrap_or(start);
    let (user, this_host) = whoami();
    let host = opts.host.clone().unwrap_or(this_host);
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_default();
    let stamp = |mut n: Node| {
        n.mtime = time;
        n.atime = time;
        n.ctime = time;
        n.uid = uid;
        n.gid = gid;
        n.user = user.clone();
        n.group = group.clone();
        n
    };
    let before = repo.write_stats();
    progress
        .files_total
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let reader = ReadAhead::start(reader);
    let (content, size) = match save_content(repo, reader, repo.key().chunker_seed(), 0, progress) {
        Ok(r) => r,
        Err(ContentError::Repository(e)) => return Err(e),
        Err(ContentError::File(source)) => {
            return Err(Error::Stream {
                source_name: opts.source_name.clone(),
                source,
            })
        }
    };
    if progress.is_cancelled() {
        return Err(Error::Cancelled);
    }
    progress
        .bytes_total
        .store(size, std::sync::atomic::Ordering::Relaxed);
    progress
        .scan_done
        .store(true, std::sync::atomic::Ordering::Relaxed);
    progress.add_file();
    let (file_name, dirs) = components.split_last().expect("at least one component");
    let mut file = stamp(Node::new(file_name.as_bytes().to_vec(), NodeType::File));
    file.mode = 0o644;
    file.size = size;
    file.links = 1;
    file.content = Some(content);
    let mut tree = save_tree(repo, vec![file])?;
    for d in dirs.iter().rev() {
        let mut dir = stamp(Node::new(d.as_bytes().to_vec(), NodeType::Dir));
        dir.mode = gomode::DIR | 0o755;
        dir.subtree = Some(tree);
        tree = save_tree(repo, vec![dir])?;
    }
    repo.flush()?;
    let after = repo.write_stats();
    let summary = SnapshotSummary {
        backup_start: start,
        backup_end: chrono::Local::now().fixed_offset(),
        files_new: 1,
        dirs_new: dirs.len() as u64,
        data_blobs: after.data_blobs - before.data_blobs,
        tree_blobs: after.tree_blobs - before.tree_blobs,
        data_added: after.data_added - before.data_added,
        data_added_packed: after.data_added_packed - before.data_added_packed,
        total_files_processed: 1,
        total_bytes_processed: size,
        ..Default::default()
    };
    let snapshot = Snapshot {
        time,
        parent: None,
        tree,
        paths: vec![format!("/{}", components.join("/"))],
        hostname: host,
        username: user,
        uid,
        gid,
        excludes: Vec::new(),
        tags: opts.tags.clone(),
        original: None,
        program_version: format!("stash {}", env!("CARGO_PKG_VERSION")),
        summary: Some(summary),
    };
    if progress.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let snapshot_id = repo.save_unpacked(crate::FileType::Snapshot, &snapshot.to_json())?;
    tracing::info!(snapshot = %snapshot_id, bytes = size, "stream backup done");
    Ok(BackupResult {
        snapshot_id,
        snapshot,
        errors: Vec::new(),
    })
}

/// Pieces read ahead of the chunker, at most.
const AHEAD_PIECES: usize = 8;
/// Size of one piece read ahead.
const PIECE: usize = 1 << 20;

/// Reads the stream in a thread of its own, up to [`AHEAD_PIECES`] ×
/// [`PIECE`] (8 MiB, plus the piece in hand) ahead of the chunker, so the producer (`pg_dump`
/// writing into a 64 KiB pipe) keeps running while a block is hashed,
/// compressed and encrypted, instead of waiting for each block in turn.
struct ReadAhead {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ReadAhead {
    fn start(mut reader: impl Read + Send + 'static) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_PIECES);
        std::thread::spawn(move || loop {
            // A piece of exactly PIECE bytes (read_to_end would grow the
            // buffer past it), short only at the end of the stream.
            let mut buf = vec![0u8; PIECE];
            let mut filled = 0;
            let res = loop {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == PIECE {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(filled);
            let end = filled < PIECE;
            match res {
                // A dropped receiver (the backup stopped) ends the thread;
                // the reader is dropped with it (a command is killed).
                Ok(()) => {
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                    if end {
                        if filled > 0 {
                            let _ = tx.send(Ok(Vec::new()));
                        }
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        });
        ReadAhead {
            rx,
            piece: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.piece.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(piece)) => {
                    self.done = piece.is_empty();
                    self.piece = piece;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(std::io::Error::other("the stream's reader thread ended"));
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn save_tree(repo: &Repository, nodes: Vec<Node>) -> Result<crate::Id> {
    let mut tree = Tree { nodes };
    tree.sort_and_check()?;
    Ok(repo.save_blob(BlobType::Tree, &tree.to_json())?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-ahead yields the stream unchanged at every length around
    /// its piece size, and passes a read error on.
    #[test]
    fn read_ahead_is_transparent_and_passes_errors_on() {
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut out = Vec::new();
            ReadAhead::start(std::io::Cursor::new(data.clone()))
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == data, "length {len}");
        }
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("exited with exit status: 3"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut out = Vec::new();
        let e = ReadAhead::start(Failing(PIECE + 10))
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }

    #[test]
    fn filenames_are_split_and_cleaned() {
        assert_eq!(filename_components("").unwrap(), ["stdin"]);
        assert_eq!(filename_components("db.sql").unwrap(), ["db.sql"]);
        assert_eq!(
            filename_components("/dumps/./pg//all.sql").unwrap(),
            ["dumps", "pg", "all.sql"]
        );
    }

    #[test]
    fn filenames_that_escape_or_name_nothing_are_refused() {
        for bad in ["..", "a/../b", "/", "./.", "a\0b"] {
            let e = filename_components(bad).unwrap_err().to_string();
            assert!(e.contains("--stdin-filename"), "{bad:?}: {e}");
        }
    }
}
