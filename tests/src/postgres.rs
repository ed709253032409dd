//! A real PostgreSQL server (Debian's `postgresql` package, installed by
//! `hack/install-deps.sh`) in a temporary directory, on loopback and a
//! Unix socket, with trust authentication; stopped when dropped.
//!
//! PostgreSQL refuses to run as root, so as root the cluster belongs to
//! the `postgres` user the package creates.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL cluster.
pub struct Postgres {
    child: Child,
    bin: PathBuf,
    /// The data directory, socket and log.
    pub dir: tempfile::TempDir,
    /// The TCP port (127.0.0.1) and the socket's port number.
    pub port: u16,
}

/// The newest installed server's bin directory.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("no PostgreSQL server under /usr/lib/postgresql: run hack/install-deps.sh (Debian's postgresql)")
    })
}

/// (uid, gid) to run the server as: `postgres` when we are root.
fn owner() -> Option<(u32, u32)> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("running as root needs the `postgres` user (Debian's postgresql package)");
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn as_owner(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = owner() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Postgres {
    /// initdb and start; waits until it accepts connections.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = crate::tempdir();
        if let Some((uid, gid)) = owner() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let out = as_owner(Command::new(bin.join("initdb")).args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "-D",
        ]))
        .arg(&data)
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::servers::free_port();
        let log = fs::File::create(dir.path().join("server.log")).expect("log");
        if let Some((uid, gid)) = owner() {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))
                .expect("chown");
        }
        let child = as_owner(
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "fsync=off", "-c", "max_wal_size=2GB"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .spawn()
        .expect("start postgres");
        let mut pg = Postgres {
            child,
            bin,
            dir,
            port,
        };
        let start = Instant::now();
        loop {
            let ready = Command::new(pg.bin.join("pg_isready"))
                .args(pg.conn_args())
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return pg;
            }
            if let Ok(Some(s)) = pg.child.try_wait() {
                panic!("postgres exited ({s}):\n{}", pg.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "postgres not ready after 60 s:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `-h SOCKETDIR -p PORT -U postgres`, for every client tool.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.dir.path().display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// A client tool of this server's version (`psql`, `pg_dumpall`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `psql -X -v ON_ERROR_STOP=1 -d DB -At -c SQL`; stdout, trimmed.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, &["-At", "-c", sql]);
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// psql with extra arguments on `db`.
    pub fn psql(&self, db: &str, args: &[&str]) -> Output {
        Command::new(self.tool("psql"))
            .args(self.conn_args())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db])
            .args(args)
            .output()
            .expect("run psql")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}
