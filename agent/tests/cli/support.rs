//! Running `stash` and restic side by side on one repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use stash_testkit::compare::{assert_trees_equal, compare_trees, CompareOptions};
pub use stash_testkit::fixture::{build_tree, FixtureOptions};
pub use stash_testkit::restic::{known_restic_0_14_limitation, write_password_file, Restic};

/// A scratch directory with a repository path and a password file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub password_file: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = write_password_file(dir.path(), "correct horse battery staple");
        Env {
            repo: dir.path().join("repo"),
            password_file,
            dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn stash(&self) -> Stash {
        Stash {
            repo: self.repo.display().to_string(),
            password_file: self.password_file.clone(),
        }
    }

    pub fn restic(&self) -> Restic {
        Restic::new(self.repo.display().to_string(), &self.password_file)
            .with_cache_dir(self.dir.path().join("restic-cache"))
    }
}

/// The `stash` binary bound to a repository and password.
pub struct Stash {
    pub repo: String,
    pub password_file: PathBuf,
}

impl Stash {
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_stash"));
        for v in [
            "STASH_REPOSITORY",
            "STASH_PASSWORD",
            "STASH_PASSWORD_FILE",
            "RESTIC_REPOSITORY",
            "RESTIC_PASSWORD",
            "RESTIC_PASSWORD_FILE",
            "STASH_LOG",
        ] {
            c.env_remove(v);
        }
        // Cheap scrypt for new keys; opening keys made by restic still pays
        // for restic's own parameters.
        c.env("STASH_KDF_PARAMS", "1024,8,1");
        c.arg("-r")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run stash")
    }

    /// Runs and insists on exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "stash {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs and insists on failure; returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "stash {args:?} should have failed\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `stash backup --json` of `paths`; returns the summary line.
    pub fn backup(&self, paths: &[&Path], extra: &[&str]) -> serde_json::Value {
        let mut args: Vec<String> = vec!["backup".into(), "--json".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = self.ok(&refs);
        let line = out.lines().last().expect("summary line");
        let v: serde_json::Value = serde_json::from_str(line).expect("summary json");
        assert_eq!(v["message_type"], "summary");
        v
    }
}

/// Where a source directory lands under a restore target: restic and stash
/// both keep the absolute path.
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").expect("absolute source"))
}

/// Compares a source tree with restic 0.14's restore of it, allowing only
/// the documented restic 0.14 limitations.
pub fn assert_restic_restore_equal(src: &Path, restored: &Path) {
    let diffs = compare_trees(src, restored, &CompareOptions::default());
    let unexplained: Vec<String> = diffs
        .iter()
        .filter(|d| known_restic_0_14_limitation(d).is_none())
        .map(|d| d.to_string())
        .collect();
    assert!(
        unexplained.is_empty(),
        "restic restore differs from the source:\n{}",
        unexplained.join("\n")
    );
}

/// Every file of a directory tree with its SHA-256 (a repository's
/// fingerprint: equal before and after means nothing was written).
pub fn checksums(dir: &std::path::Path) -> Vec<(String, String)> {
    use sha2::Digest;
    let mut v: Vec<(String, String)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let sum = if e.file_type().is_file() {
                hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).unwrap()))
            } else {
                "dir".into()
            };
            (rel, sum)
        })
        .collect();
    v.sort();
    v
}
