//! The real restic binary, our oracle for the repository format.
//!
//! Tests that use it fail (never skip) when restic is missing: `hack/test.sh`
//! installs it. The behaviour pinned here is restic 0.14's, Debian
//! bookworm's version.
//!
//! What restic 0.14 carries through backup and restore, as root (see the
//! `restic_round_trips_the_fixture` test): everything the fixture holds —
//! content, modes with setuid/setgid/sticky, nanosecond mtimes of files,
//! directories and symlinks (pre-1970 and year 2200 included), ownership
//! (chown before chmod, so setuid survives), hard links, FIFOs, `user.*`
//! xattrs and names that are not UTF-8 — except:
//! - symlink targets that are not UTF-8: see [`known_restic_0_14_limitation`];
//! - holes: a sparse file is restored fully allocated (0.14 has no
//!   `restore --sparse`); the comparison looks at bytes, not allocation;
//! - the root of `backup .` ([`Restic::backup_contents`]) has no node in the
//!   snapshot, so its own mode and times are not restored (restic creates the
//!   target 0700); hence `CompareOptions::check_root_metadata` is off by
//!   default.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::compare::{Difference, DifferenceKind};

/// Environment variable naming the restic binary to use instead of the
/// `restic` found on `PATH`.
pub const RESTIC_ENV: &str = "STASH_TEST_RESTIC";

/// Runs restic against one repository.
#[derive(Debug, Clone)]
pub struct Restic {
    /// The restic executable.
    bin: PathBuf,
    /// Passed as `RESTIC_REPOSITORY`: a local path or a backend URL.
    repo: String,
    /// Passed as `RESTIC_PASSWORD_FILE`.
    password_file: PathBuf,
    /// Passed as `RESTIC_CACHE_DIR`.
    cache_dir: PathBuf,
    /// More environment variables (backend credentials).
    envs: Vec<(OsString, OsString)>,
}

impl Restic {
    /// Restic for the repository `repo` (a path or URL) and the password in
    /// `password_file`.
    ///
    /// The binary is `$STASH_TEST_RESTIC` if set, else `restic` on `PATH`;
    /// panics if there is none. restic's cache goes in `restic-cache` beside
    /// the password file (normally the test's temporary directory), so it
    /// is never shared between tests and goes away with them; see
    /// [`Restic::with_cache_dir`].
    pub fn new(repo: impl Into<String>, password_file: impl Into<PathBuf>) -> Restic {
        let bin =
            locate(env::var_os(RESTIC_ENV), env::var_os("PATH")).unwrap_or_else(|e| panic!("{e}"));
        let password_file = password_file.into();
        let cache_dir = password_file
            .parent()
            .unwrap_or(Path::new("."))
            .join("restic-cache");
        Restic {
            bin,
            repo: repo.into(),
            password_file,
            cache_dir,
            envs: Vec::new(),
        }
    }

    /// The same, with the restic binary `bin` (such as a current release
    /// built by `hack/test-servers.sh`) instead of the default.
    pub fn with_bin(self, bin: impl Into<PathBuf>) -> Restic {
        Restic {
            bin: bin.into(),
            ..self
        }
    }

    /// The same, with `key=value` in restic's environment (credentials of
    /// an object store, say).
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Restic {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The same, with restic's cache in `dir`.
    pub fn with_cache_dir(self, dir: impl Into<PathBuf>) -> Restic {
        Restic {
            cache_dir: dir.into(),
            ..self
        }
    }

    /// The restic executable in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The repository, as passed to restic.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// A restic command for this repository, without arguments, for what the
    /// methods below do not cover (a working directory, standard input).
    ///
    /// The repository, password file and cache directory are set through the
    /// environment; `RESTIC_PASSWORD` and `RESTIC_PASSWORD_COMMAND` are
    /// removed so that the caller's environment cannot override the password
    /// file. Standard input is empty.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", &self.cache_dir)
            .env_remove("RESTIC_PASSWORD")
            .env_remove("RESTIC_PASSWORD_COMMAND")
            .env_remove("RESTIC_REPOSITORY_FILE")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs restic with `args` and returns what it did, whatever its exit
    /// status. Panics only if it cannot be started.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        output(&mut cmd)
    }

    /// Runs restic with `args` and returns its standard output. Panics with
    /// the command line, exit status, stdout and stderr unless it succeeds.
    pub fn run_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        output_ok(&mut cmd)
    }

    /// `restic init` with repository format `version` (1 or 2).
    pub fn init(&self, version: u32) {
        self.run_ok(["init", "--repository-version", &version.to_string()]);
    }

    /// Backs up `paths` (relative ones against the test's working
    /// directory) and returns the snapshot id from the JSON summary; restic
    /// 0.14 prints the short (8 hex digit) form.
    pub fn backup<P: AsRef<Path>>(&self, paths: &[P], extra_args: &[&str]) -> String {
        let mut cmd = self.command();
        cmd.args(["backup", "--json"]).args(extra_args).arg("--");
        cmd.args(paths.iter().map(AsRef::as_ref));
        snapshot_id(&output_ok(&mut cmd))
    }

    /// Backs up the contents of `dir` (`restic backup .` run inside it), so
    /// that the snapshot's root holds `dir`'s entries and a restore into an
    /// empty target compares directly with `dir`. Returns the snapshot id as
    /// [`Restic::backup`] does.
    pub fn backup_contents(&self, dir: &Path, extra_args: &[&str]) -> String {
        let mut cmd = self.command();
        cmd.current_dir(dir)
            .args(["backup", "--json"])
            .args(extra_args)
            .args(["--", "."]);
        snapshot_id(&output_ok(&mut cmd))
    }

    /// `restic snapshots --json`: an array of snapshot objects.
    pub fn snapshots_json(&self) -> serde_json::Value {
        let out = self.run_ok(["snapshots", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("restic snapshots --json printed invalid JSON ({e}):\n{out}")
        })
    }

    /// The ids of the snapshots, as `restic snapshots --json` lists them.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let list = self.snapshots_json();
        let list = list.as_array().expect("restic snapshots --json is a list");
        list.iter()
            .map(|s| s["id"].as_str().expect("a snapshot id").to_owned())
            .collect()
    }

    /// `restic check --read-data`: checks the structure and reads and
    /// verifies every pack. Returns restic's report.
    pub fn check_read_data(&self) -> String {
        self.run_ok(["check", "--read-data"])
    }

    /// Restores `snapshot` (an id or `latest`) into `target`.
    pub fn restore(&self, snapshot: &str, target: &Path) {
        let mut cmd = self.command();
        cmd.args(["restore", snapshot, "--target"]).arg(target);
        output_ok(&mut cmd);
    }

    /// `restic ls --json snapshot`: the nodes (`struct_type: "node"`), in
    /// restic's order; the leading snapshot object is left out. Names and
    /// symlink targets that are not UTF-8 come back with U+FFFD in place of
    /// the bad bytes: this is Go's JSON encoder, not the repository.
    pub fn ls_json(&self, snapshot: &str) -> Vec<serde_json::Value> {
        let out = self.run_ok(["ls", "--json", snapshot]);
        out.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| {
                    panic!("restic ls --json printed a line that is not JSON ({e}): {line}")
                })
            })
            .filter(|v| v["struct_type"] == "node")
            .collect()
    }

    /// restic's version number, such as `0.14.0`.
    pub fn version(&self) -> String {
        let out = self.run_ok(["version"]);
        // "restic 0.14.0 compiled with go1.19.8 on linux/amd64"
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected `restic version` output: {out:?}"))
            .to_string()
    }
}

/// Writes `password` (no trailing newline) to `dir/restic-password`, readable
/// by the owner only, and returns its path.
pub fn write_password_file(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("restic-password");
    fs::write(&path, password).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("cannot chmod {path:?}: {e}"));
    path
}

/// Why `diff`, found comparing a source tree with restic 0.14's restore of
/// it, is restic's doing rather than a bug, or `None` if it is not known.
///
/// Known: a symlink target that is not valid UTF-8. restic 0.14 encodes node
/// *names* with its own escaping (`\xff` spelled out in the tree JSON) and
/// restores them exactly, but writes `linktarget` with Go's `encoding/json`,
/// which replaces each invalid byte with U+FFFD. The bytes are lost at backup
/// time, in the repository; the restore then makes the link point to the
/// UTF-8 replacement. (Later restic versions added `linktarget_raw`.)
pub fn known_restic_0_14_limitation(diff: &Difference) -> Option<&'static str> {
    match &diff.kind {
        DifferenceKind::SymlinkTarget { expected, actual } => {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(expected.as_os_str());
            let lossy = String::from_utf8_lossy(bytes);
            (std::str::from_utf8(bytes).is_err() && actual.to_str() == Some(&*lossy)).then_some(
                "restic 0.14 stores symlink targets through Go's JSON encoder, \
                 replacing bytes that are not UTF-8 with U+FFFD",
            )
        }
        _ => None,
    }
}

/// Finds the restic binary: `env_value` (`$STASH_TEST_RESTIC`) if given,
/// else `restic` in the directories of `path` (`$PATH`).
fn locate(env_value: Option<OsString>, path: Option<OsString>) -> Result<PathBuf, String> {
    const HOW: &str = "run hack/test.sh, which installs it (apt-get install restic)";
    if let Some(bin) = env_value.filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if is_executable(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "restic not found: {RESTIC_ENV}={bin:?} is not an executable file; \
                 unset it or {HOW}"
            ))
        };
    }
    path.iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join("restic"))
        .find(|bin| is_executable(bin))
        .ok_or_else(|| format!("restic not found: {HOW}"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", command_line(cmd)))
}

fn output_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "{} failed ({}){}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            command_line(cmd),
            out.status,
            cmd.get_current_dir()
                .map(|d| format!(" in {d:?}"))
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command as a shell-like line, for messages.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `snapshot_id` of the summary line of `restic backup --json`.
fn snapshot_id(stdout: &str) -> String {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["message_type"] == "summary")
        .and_then(|v| v["snapshot_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            panic!("restic backup --json printed no summary with a snapshot_id:\n{stdout}")
        })
}

impl Restic {
    /// Runs `restic backup --json ARGS` in `cwd` as another tool's pod runs
    /// it, so that the snapshot records the paths that tool records: in a
    /// private mount namespace whose `/` is an overlay of the host's (its
    /// scratch space under `scratch`), with each `(source, at)` of `mounts`
    /// bind-mounted at `at`. Needs root (`unshare`, `mount`, `chroot`).
    /// Returns the snapshot id from restic's JSON summary.
    pub fn backup_in_mount_namespace(
        &self,
        scratch: &Path,
        mounts: &[(&Path, &str)],
        cwd: &str,
        args: &[&str],
    ) -> String {
        fs::create_dir_all(scratch).unwrap();
        let mut script = format!(
            "set -e\nT='{root}'\nmount -t tmpfs tmpfs \"$T\"\nmkdir \"$T/u\" \"$T/w\" \"$T/m\"\n\
             mount -t overlay overlay -o \"lowerdir=/,upperdir=$T/u,workdir=$T/w\" \"$T/m\"\n\
             mount --bind /tmp \"$T/m/tmp\"\nmount --rbind /proc \"$T/m/proc\"\nmount --rbind /dev \"$T/m/dev\"\n",
            root = scratch.display()
        );
        for (src, at) in mounts {
            script.push_str(&format!(
                "mkdir -p \"$T/m{at}\"\nmount --bind '{}' \"$T/m{at}\"\n",
                src.display()
            ));
        }
        script.push_str(&format!(
            "exec chroot \"$T/m\" sh -c 'cd {cwd} && exec \"$0\" \"$@\"' \"$@\"\n"
        ));
        let template = self.command();
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(self.bin())
        .args(["backup", "--json"])
        .args(args);
        for (k, v) in template.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c.output().expect("run unshare");
        assert!(
            out.status.success(),
            "restic backup {args:?} in a pod's mount namespace failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let summary = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .unwrap_or_else(|| panic!("no summary in restic's output:\n{stdout}"));
        summary["snapshot_id"].as_str().unwrap().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{compare_trees, CompareOptions};
    use crate::fixture::{self, FixtureOptions};

    /// A restic for a fresh repository path in `dir` (not yet initialized).
    fn restic_in(dir: &Path) -> Restic {
        let password = write_password_file(dir, "stash-testkit password");
        Restic::new(dir.join("repo").to_str().unwrap(), password)
    }

    /// Backup with restic, restore with restic, compare with the source: the
    /// fixture and comparator agree with the oracle on what must round-trip.
    #[test]
    fn restic_round_trips_the_fixture() {
        let tmp = crate::tempdir();
        let src = tmp.path().join("src");
        let report = fixture::build_tree(&src, &FixtureOptions::small()).unwrap();
        let restic = restic_in(tmp.path());
        restic.init(2);
        let config: serde_json::Value =
            serde_json::from_str(&restic.run_ok(["cat", "config"])).unwrap();
        assert_eq!(config["version"], 2, "{config}");

        let id = restic.backup_contents(&src, &[]);
        let snapshots = restic.snapshots_json();
        let snapshots = snapshots.as_array().expect("an array of snapshots");
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        assert_eq!(snapshots[0]["short_id"], id.as_str());
        assert!(restic.check_read_data().contains("no errors were found"));

        // Every entry but the root is a node; names come back in JSON.
        let nodes = restic.ls_json(&id);
        let entries = walkdir::WalkDir::new(&src).min_depth(1).into_iter().count();
        assert_eq!(nodes.len(), entries);
        let large = nodes
            .iter()
            .find(|n| n["path"] == format!("/{}", fixture::LARGE_FILE))
            .expect("the large file is listed");
        assert_eq!(large["size"], FixtureOptions::small().large_file_size);

        let out = tmp.path().join("out");
        restic.restore(&id, &out);
        let diffs = compare_trees(&src, &out, &CompareOptions::default());
        let (known, unknown): (Vec<_>, Vec<_>) = diffs
            .iter()
            .partition(|d| known_restic_0_14_limitation(d).is_some());
        assert!(
            unknown.is_empty(),
            "restic's restore differs from the source ({report:?}):\n{}",
            unknown
                .iter()
                .map(|d| format!("  {d}\n"))
                .collect::<String>()
        );
        // Pin the one known loss, so that this test notices when restic (or
        // our understanding of it) changes.
        if restic.version().starts_with("0.14.") {
            assert_eq!(
                known.iter().map(|d| d.path.as_path()).collect::<Vec<_>>(),
                vec![Path::new(fixture::NON_UTF8_SYMLINK)]
            );
        }
    }

    #[test]
    fn restic_writes_repository_version_1_when_asked() {
        let tmp = crate::tempdir();
        let restic = restic_in(tmp.path());
        restic.init(1);
        let config: serde_json::Value =
            serde_json::from_str(&restic.run_ok(["cat", "config"])).unwrap();
        assert_eq!(config["version"], 1, "{config}");
        let id = restic.backup(&[tmp.path().join("restic-password")], &["--tag", "v1"]);
        assert_eq!(restic.snapshots_json()[0]["short_id"], id.as_str());
        assert_eq!(restic.snapshots_json()[0]["tags"][0], "v1");
    }

    #[test]
    fn run_ok_reports_the_command_and_its_output() {
        let tmp = crate::tempdir();
        let restic = restic_in(tmp.path());
        let payload = std::panic::catch_unwind(|| restic.run_ok(["cat", "config"]))
            .expect_err("no repository there");
        let msg = payload
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(
            msg.contains("\"cat\" \"config\" failed (exit status: 1)"),
            "{msg}"
        );
        assert!(msg.contains("--- stderr ---\n"), "{msg}");
        assert!(msg.contains("repo"), "{msg}");
        // `run` returns the failure instead.
        assert!(!restic.run(["cat", "config"]).status.success());
    }

    #[test]
    fn password_comes_from_the_file_only() {
        let tmp = crate::tempdir();
        let restic = restic_in(tmp.path());
        let mut cmd = restic.command();
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("RESTIC_PASSWORD"), None)));
        assert!(envs.contains(&(OsStr::new("RESTIC_PASSWORD_COMMAND"), None)));
        assert!(envs.contains(&(
            OsStr::new("RESTIC_CACHE_DIR"),
            Some(tmp.path().join("restic-cache").as_os_str())
        )));
        assert_eq!(
            fs::read(tmp.path().join("restic-password")).unwrap(),
            b"stash-testkit password"
        );
        cmd.arg("version");
        assert!(cmd.output().unwrap().status.success());
    }

    #[test]
    fn locate_prefers_the_environment_variable() {
        let tmp = crate::tempdir();
        let fake = tmp.path().join("my-restic");
        fs::write(&fake, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            locate(Some(fake.clone().into()), Some("/nonexistent".into())),
            Ok(fake)
        );

        let err = locate(Some(tmp.path().join("absent").into()), None).unwrap_err();
        assert!(err.starts_with("restic not found"), "{err}");
        assert!(err.contains(RESTIC_ENV), "{err}");
    }

    #[test]
    fn locate_searches_path_and_says_how_to_install() {
        let tmp = crate::tempdir();
        let (empty, bin) = (tmp.path().join("empty"), tmp.path().join("bin"));
        fs::create_dir(&empty).unwrap();
        fs::create_dir(&bin).unwrap();
        // Not executable: skipped.
        fs::write(empty.join("restic"), "").unwrap();
        fs::write(bin.join("restic"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(bin.join("restic"), fs::Permissions::from_mode(0o755)).unwrap();
        let path = env::join_paths([&empty, &bin]).unwrap();
        assert_eq!(locate(None, Some(path)), Ok(bin.join("restic")));

        let err = locate(None, Some(empty.into())).unwrap_err();
        assert_eq!(
            err,
            "restic not found: run hack/test.sh, which installs it (apt-get install restic)"
        );
    }

    #[test]
    fn snapshot_id_is_read_from_the_summary() {
        let stdout = concat!(
            r#"{"message_type":"status","percent_done":1}"#,
            "\n",
            r#"{"message_type":"summary","files_new":3,"snapshot_id":"09328d20"}"#,
            "\n"
        );
        assert_eq!(snapshot_id(stdout), "09328d20");
    }

    #[test]
    fn known_limitation_is_exactly_the_lossy_symlink_target() {
        use std::os::unix::ffi::OsStrExt;
        let target = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        let lossy = Difference {
            path: PathBuf::from(fixture::NON_UTF8_SYMLINK),
            kind: DifferenceKind::SymlinkTarget {
                expected: target(b"target-\xff\xfe-bytes"),
                actual: target("target-\u{fffd}\u{fffd}-bytes".as_bytes()),
            },
        };
        assert!(known_restic_0_14_limitation(&lossy).is_some());
        let wrong = Difference {
            path: PathBuf::from(fixture::NON_UTF8_SYMLINK),
            kind: DifferenceKind::SymlinkTarget {
                expected: target(b"target-\xff\xfe-bytes"),
                actual: target(b"target-elsewhere"),
            },
        };
        assert!(known_restic_0_14_limitation(&wrong).is_none());
        let utf8 = Difference {
            path: PathBuf::from("links/to-file"),
            kind: DifferenceKind::SymlinkTarget {
                expected: target(b"a"),
                actual: target(b"b"),
            },
        };
        assert!(known_restic_0_14_limitation(&utf8).is_none());
    }
}
