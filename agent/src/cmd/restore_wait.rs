//! `stash restore-wait`: an init container's wait for the node agent.
//!
//! A pod that must start on restored data carries an init container
//! running `stash restore-wait --dir /data ...` with the target volumes
//! mounted. The agent restores into those volumes node-locally and leaves
//! a marker file in each volume's root when it is done; this command waits
//! until every directory has its marker, removes the markers (so the next
//! restore waits again), and exits 0 so the pod's containers start.
//!
//! With `--session NAME` (what the controller's admission webhook injects)
//! only the marker of that RestoreSession counts, and it stays: a pod of the
//! same restore recreated later finds the data already there and starts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::RESTORE_MARKER;
use crate::cli::RestoreWaitArgs;

/// Waits for every marker; returns the exit code.
pub fn run(a: &RestoreWaitArgs) -> Result<u8> {
    for d in &a.dirs {
        if !d.is_dir() {
            bail!(
                "{} is not a directory: mount the volume to restore there",
                d.display()
            );
        }
    }
    let start = Instant::now();
    let mut reported = false;
    loop {
        let missing: Vec<&Path> = a
            .dirs
            .iter()
            .map(|d| d.as_path())
            .filter(|d| !marker_done(d, a.session.as_deref()))
            .collect();
        if missing.is_empty() {
            break;
        }
        if !reported {
            eprintln!(
                "stash restore-wait: waiting for the restore into {}",
                missing
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            reported = true;
        }
        if a.timeout.is_some_and(|t| start.elapsed() >= t) {
            bail!(
                "timed out after {:?}: no restore finished into {}",
                a.timeout.unwrap_or_default(),
                missing
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for d in &a.dirs {
        for (marker, body) in markers(d, a.session.as_deref()) {
            println!("{}: restored ({})", d.display(), body.trim());
            if !a.keep_marker && a.session.is_none() {
                std::fs::remove_file(&marker)
                    .with_context(|| format!("removing {}", marker.display()))?;
            }
        }
    }
    Ok(0)
}

/// The finished restores' markers in `dir` (of `session`, if given), with
/// their content. The agent names each after its RestoreSession's UID
/// (`.stash-restore-done.<uid>`); a marker whose content does not parse is
/// not finished (or not the agent's).
fn markers(dir: &Path, session: Option<&str>) -> Vec<(std::path::PathBuf, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = name == RESTORE_MARKER
            || (name.starts_with(&format!("{RESTORE_MARKER}.")) && !name.ends_with(".tmp"));
        if !ours || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(body) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        if session.is_none_or(|want| v["session"].as_str() == Some(want)) {
            out.push((e.path(), body));
        }
    }
    out
}

/// Whether `dir` holds a finished restore's marker (of `session`, if given).
fn marker_done(dir: &Path, session: Option<&str>) -> bool {
    !markers(dir, session).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_counts_for_its_own_session_only() {
        let d = tempfile::tempdir().unwrap();
        assert!(!marker_done(d.path(), None));
        std::fs::write(
            d.path().join(RESTORE_MARKER),
            br#"{"session":"copy","snapshot":"ab"}"#,
        )
        .unwrap();
        assert!(marker_done(d.path(), None));
        assert!(marker_done(d.path(), Some("copy")));
        assert!(!marker_done(d.path(), Some("other")));
        std::fs::write(d.path().join(RESTORE_MARKER), b"garbage").unwrap();
        assert!(!marker_done(d.path(), Some("copy")));
        assert!(!marker_done(d.path(), None));
        // The agent's per-UID marker.
        std::fs::write(
            d.path().join(format!("{RESTORE_MARKER}.0a1b")),
            br#"{"session":"copy","uid":"0a1b","snapshot":"ab"}"#,
        )
        .unwrap();
        assert!(marker_done(d.path(), Some("copy")));
        assert!(!marker_done(d.path(), Some("other")));
    }
}
