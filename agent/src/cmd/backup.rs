//! `stash backup`.

use anyhow::{bail, Context, Result};
use std::sync::Arc;

use repo_format::ops::backup::{backup_with_progress, BackupOptions, BackupResult};
use repo_format::ops::progress::Progress;
use repo_format::ops::stdin::{backup_stdin, StdinOptions};
use repo_format::repository::lock::{LockTiming, RepoLock};
use repo_format::FileType;
use serde_json::json;

use crate::cli::{BackupArgs, GlobalArgs};
use crate::progress::{Mode, Reporter};
use crate::{format, repo, EXIT_INCOMPLETE};

pub fn run(g: &GlobalArgs, a: &BackupArgs) -> Result<u8> {
    let started = std::time::Instant::now();
    let mut r = repo::open(g)?;
    let backend_connections = r.backend().connections();
    Arc::get_mut(&mut r)
        .expect("not shared yet")
        .set_write_options(repo_format::WriteOptions {
            pack_size: a.pack_size as usize * (1 << 20),
            compression: a.compression,
            upload_threads: a
                .upload_threads
                .map(|n| n as usize)
                .unwrap_or(backend_connections),
            ..Default::default()
        });
    // A lock that cannot be refreshed in time stops the backup before its
    // snapshot, so no prune elsewhere can delete what it still writes.
    let progress = Arc::new(Progress::default());
    let on_lost = {
        let p = progress.clone();
        Box::new(move || p.cancel())
    };
    let stream = stream_source(g, a)?;
    let lock = RepoLock::acquire_with(r.clone(), false, LockTiming::default(), Some(on_lost))?;
    r.load_index().context("loading the index")?;
    repo_format::ops::repair::reuse_interrupted_uploads(&r, &lock);
    if let Some((source_name, reader)) = stream {
        let opts = StdinOptions {
            filename: a.stdin_filename.clone(),
            source_name,
            host: a.host.clone(),
            tags: a.tags.clone(),
            time: a
                .time
                .as_deref()
                .map(|t| super::parse_time(t, "--time"))
                .transpose()?,
        };
        let reporter = Reporter::start(
            progress.clone(),
            if a.json { Mode::Json } else { Mode::Auto },
            "backup",
        );
        let res = backup_stdin(&r, reader, &opts, &progress);
        reporter.finish();
        lock.check()?;
        return report(a, started, res?);
    }
    let parent = a
        .parent
        .as_deref()
        .map(|p| r.find_id(FileType::Snapshot, p))
        .transpose()
        .context("--parent")?;
    let opts = BackupOptions {
        paths: a.paths.clone(),
        as_path: None,
        host: a.host.clone(),
        tags: a.tags.clone(),
        excludes: a.excludes.clone(),
        parent,
        force: a.force,
        time: a
            .time
            .as_deref()
            .map(|t| super::parse_time(t, "--time"))
            .transpose()?,
        with_atime: a.with_atime,
        max_unreadable: None,
        cross_mounts: a.cross_mounts,
        skip_top: Vec::new(),
    };
    let reporter = Reporter::start(
        progress.clone(),
        if a.json { Mode::Json } else { Mode::Auto },
        "backup",
    );
    let res = backup_with_progress(&r, &opts, &progress);
    reporter.finish();
    lock.check()?;
    report(a, started, res?)
}

/// Prints the outcome as restic does; the exit code.
fn report(a: &BackupArgs, started: std::time::Instant, res: BackupResult) -> Result<u8> {
    let s = res.snapshot.summary.clone().unwrap_or_default();
    for e in &res.errors {
        if a.json {
            eprintln!(
                "{}",
                json!({"message_type": "error", "error": {"message": e.message}, "during": "archival", "item": e.path.to_string_lossy()})
            );
        } else {
            eprintln!("error: {}: {}", e.path.display(), e.message);
        }
    }
    if a.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "files_new": s.files_new,
                "files_changed": s.files_changed,
                "files_unmodified": s.files_unmodified,
                "dirs_new": s.dirs_new,
                "dirs_changed": s.dirs_changed,
                "dirs_unmodified": s.dirs_unmodified,
                "data_blobs": s.data_blobs,
                "tree_blobs": s.tree_blobs,
                "data_added": s.data_added,
                "data_added_packed": s.data_added_packed,
                "total_files_processed": s.total_files_processed,
                "total_bytes_processed": s.total_bytes_processed,
                "total_duration": started.elapsed().as_secs_f64(),
                "snapshot_id": res.snapshot_id.to_hex(),
                "parent": res.snapshot.parent.map(|p| p.to_hex()),
                "errors": res.errors.len(),
            })
        );
    } else {
        if let Some(p) = res.snapshot.parent {
            println!("using parent snapshot {}", p.short());
        }
        println!(
            "Files:       {:5} new, {:5} changed, {:5} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Dirs:        {:5} new, {:5} changed, {:5} unmodified",
            s.dirs_new, s.dirs_changed, s.dirs_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            format::bytes(s.data_added),
            format::bytes(s.data_added_packed)
        );
        println!(
            "processed {} files, {} in {}",
            s.total_files_processed,
            format::bytes(s.total_bytes_processed),
            format::duration(started.elapsed())
        );
        println!("snapshot {} saved", res.snapshot_id.short());
    }
    if res.errors.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "Warning: {} file(s) could not be read; the snapshot is incomplete",
            res.errors.len()
        );
        Ok(EXIT_INCOMPLETE)
    }
}

/// With --stdin or --stdin-from-command: what the stream is, and the
/// stream. Checked before the repository is locked.
fn stream_source(
    g: &GlobalArgs,
    a: &BackupArgs,
) -> Result<Option<(String, Box<dyn std::io::Read + Send>)>> {
    if !a.stdin && !a.stdin_from_command {
        if a.stdin_filename != "stdin" {
            bail!("--stdin-filename needs --stdin or --stdin-from-command");
        }
        return Ok(None);
    }
    if !a.excludes.is_empty() || a.cross_mounts || a.with_atime || a.force {
        bail!("--exclude, --cross-mounts, --with-atime and --force apply to paths, not to --stdin or --stdin-from-command");
    }
    if a.parent.is_some() {
        eprintln!("Warning: --parent is ignored: a stream's snapshot has no parent (as in restic)");
    }
    repo_format::ops::stdin::filename_components(&a.stdin_filename)?;
    if a.stdin_from_command {
        let Some((program, args)) = a.paths.split_first() else {
            bail!("--stdin-from-command needs a command: stash backup --stdin-from-command -- COMMAND [ARGS...]");
        };
        let reader = CommandReader::spawn(program.as_os_str(), args)?;
        return Ok(Some((reader.name.clone(), Box::new(reader))));
    }
    if !a.paths.is_empty() {
        bail!("--stdin backs up standard input only: give no paths (or use --stdin-from-command)");
    }
    let password_from_stdin = g
        .password_file
        .as_deref()
        .is_some_and(|p| p == std::path::Path::new("/dev/stdin") || p == std::path::Path::new("-"));
    if password_from_stdin {
        bail!("cannot read both the password and the data from standard input");
    }
    Ok(Some(("standard input".into(), Box::new(std::io::stdin()))))
}

/// A command's standard output as a stream. At its end the command's exit
/// status decides: anything but 0 is a read error, so no snapshot is
/// written (restic's semantics). Dropped early (the backup failed), the
/// command is killed and reaped.
struct CommandReader {
    name: String,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    done: bool,
    /// The command's failure, repeated to every later read.
    failed: Option<String>,
}

impl CommandReader {
    fn spawn(program: &std::ffi::OsStr, args: &[std::path::PathBuf]) -> Result<CommandReader> {
        let name = format!("command {:?}", program.to_string_lossy());
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().expect("piped");
        Ok(CommandReader {
            name,
            child,
            stdout,
            done: false,
            failed: None,
        })
    }
}

impl std::io::Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = &self.failed {
            return Err(std::io::Error::other(f.clone()));
        }
        if self.done {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            self.done = true;
            if !status.success() {
                let f = format!("exited with {status}");
                self.failed = Some(f.clone());
                return Err(std::io::Error::other(f));
            }
        }
        Ok(n)
    }
}

impl Drop for CommandReader {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
