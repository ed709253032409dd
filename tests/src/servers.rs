//! Real storage servers for the backend tests: restic's rest-server, MinIO,
//! Azurite, fake-gcs-server and toxiproxy, plus a current restic.
//!
//! `hack/test-servers.sh` builds them into `~/.cache/stash-test-bin/` at the
//! versions in `hack/test-servers.versions`; this module only starts them.
//! A missing binary is a test failure that names the script, never a skip.
//!
//! Each server is started by the test that uses it, on a loopback port
//! chosen at run time, with its data in a temporary directory, and stopped
//! when its [`Server`] is dropped (also when the test panics). If the test
//! process dies without unwinding, the server follows: it runs under a
//! small shell watchdog that kills it when the test's end of a pipe closes.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The versions file, shared with `hack/test-servers.sh`.
const VERSIONS: &str = include_str!("../../hack/test-servers.versions");

/// Environment variable for the cache directory (default
/// `~/.cache/stash-test-bin`), as in `hack/test-servers.sh`.
pub const CACHE_ENV: &str = "STASH_TEST_BIN";

/// The pinned version of `name` (`minio`, `rest-server`, `restic`,
/// `toxiproxy`, `fake-gcs-server`, `azurite`).
pub fn version(name: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("{name} is not in hack/test-servers.versions"))
}

/// The executable's name in its cache directory.
fn executable(name: &str) -> &'static str {
    match name {
        "toxiproxy" => "toxiproxy-server",
        "azurite" => "azurite-blob",
        "minio" => "minio",
        "rest-server" => "rest-server",
        "restic" => "restic",
        "fake-gcs-server" => "fake-gcs-server",
        "prometheus" => "prometheus",
        other => panic!("unknown test server {other}"),
    }
}

/// The built binary of `name`; panics, naming the script that builds it,
/// when it is not there.
pub fn bin(name: &str) -> PathBuf {
    let cache = std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/stash-test-bin")
        });
    let path = cache
        .join(format!("{name}-{}", version(name)))
        .join(executable(name));
    if !path.is_file() {
        panic!(
            "{name} {} is not built ({} is missing): run `bash hack/test-servers.sh` \
             (hack/test.sh does), which builds the test servers into {}",
            version(name),
            path.display(),
            cache.display()
        );
    }
    path
}

/// promtool, built beside prometheus (one module, one build).
pub fn promtool() -> PathBuf {
    bin("prometheus").with_file_name("promtool")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// How to start a server and tell that it is ready.
struct Launch<'a> {
    /// What it is, for messages.
    name: &'a str,
    /// The executable.
    bin: &'a Path,
    /// Its arguments.
    args: &'a [String],
    /// Its environment, besides ours.
    envs: &'a [(&'static str, String)],
    /// Whether it serves on the port.
    ready: &'a dyn Fn(u16) -> bool,
    /// How long it may take to get ready.
    timeout: Duration,
}

/// A running server; stopped when dropped.
pub struct Server {
    /// What it is, for messages.
    name: String,
    /// The watchdog shell; the server is its child.
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// Its data and log.
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server under the watchdog, logging to `dir/server.log`,
    /// and waits until it is ready.
    fn start(launch: &Launch<'_>, dir: tempfile::TempDir, port: u16) -> Server {
        let Launch {
            name,
            bin,
            args,
            envs,
            ready,
            timeout,
        } = launch;
        let (timeout, name) = (*timeout, *name);
        let log = fs::File::create(dir.path().join("server.log")).expect("server log");
        // The watchdog: the server runs in the background; `cat` returns when
        // our end of its stdin closes (Drop, or this process dying), and the
        // server is then terminated.
        // (Background jobs of a script get /dev/null as stdin, hence fd 3.)
        let script = r#"exec 3<&0; "$@" </dev/null 3<&- & p=$!; (cat <&3 >/dev/null; kill $p 2>/dev/null) & exec 3<&-; wait $p"#;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(bin)
            .args(*args)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in *envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", bin.display()));
        let mut server = Server {
            name: name.to_string(),
            child,
            port,
            dir,
        };
        let start = Instant::now();
        loop {
            if ready(port) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{name} exited ({status}) before it was ready:\n{}",
                    server.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{name} not ready on 127.0.0.1:{port} after {timeout:?}:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:<port>`, for a server started with TLS.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The directory the server keeps its data in.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin makes the watchdog terminate the server.
        drop(self.child.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within 10 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something accepts TCP connections on the port.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A minimal HTTP/1.0 request on loopback; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_at(Ipv4Addr::LOCALHOST, port, method, path, body)
}

/// [`http`] to another address.
pub fn http_at(
    address: Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from((address, port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {address}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Starts a server on a fresh port, trying again on another port if the one
/// picked was taken in the meantime.
fn start_on_free_port(
    name: &str,
    make: impl Fn(u16, &Path) -> (Vec<String>, Vec<(&'static str, String)>),
    ready: &dyn Fn(u16) -> bool,
    timeout: Duration,
) -> Server {
    let bin = bin(name);
    let mut last = None;
    for _ in 0..3 {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix(&format!("stash-{name}-"))
            .tempdir()
            .expect("tempdir");
        fs::create_dir(dir.path().join("data")).expect("data dir");
        let (args, envs) = make(port, &dir.path().join("data"));
        let launch = Launch {
            name,
            bin: &bin,
            args: &args,
            envs: &envs,
            ready,
            timeout,
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Server::start(&launch, dir, port)
        }));
        match r {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
    }
    std::panic::resume_unwind(last.expect("tried"))
}

/// Prometheus with `config` (YAML; its `rule_files` may name files in
/// `rules`, written beside it as `(name, content)`), storing in its data
/// directory and answering its HTTP API on the port. Ready once `/-/ready`
/// answers 200.
pub fn prometheus(config: &str, rules: &[(&str, &str)]) -> Server {
    let config = config.to_owned();
    let rules: Vec<(String, String)> = rules
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    start_on_free_port(
        "prometheus",
        |port, data| {
            let conf = data.join("prometheus.yml");
            fs::write(&conf, &config).expect("write prometheus.yml");
            for (name, content) in &rules {
                fs::write(data.join(name), content).expect("write a rules file");
            }
            let args = vec![
                format!("--config.file={}", conf.display()),
                format!("--storage.tsdb.path={}", data.join("tsdb").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ];
            (args, vec![])
        },
        &|port| {
            http_at(Ipv4Addr::LOCALHOST, port, "GET", "/-/ready", "").is_some_and(|(c, _)| c == 200)
        },
        Duration::from_secs(60),
    )
}

/// Runs the PromQL `query` at Prometheus on `port` now: the result vector
/// as (labels, value) pairs, or `None` when the API did not answer.
pub fn prometheus_query(
    port: u16,
    query: &str,
) -> Option<Vec<(std::collections::BTreeMap<String, String>, String)>> {
    let mut q = String::new();
    for b in query.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                q.push(b as char)
            }
            _ => q.push_str(&format!("%{b:02X}")),
        }
    }
    let (code, body) = http_at(
        Ipv4Addr::LOCALHOST,
        port,
        "GET",
        &format!("/api/v1/query?query={q}"),
        "",
    )?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let out = v["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            (
                labels,
                r["value"][1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Some(out)
}

/// restic's rest-server, without authentication (or with `htpasswd`).
pub fn rest_server(extra_args: &[&str]) -> Server {
    let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    start_on_free_port(
        "rest-server",
        |port, data| {
            let mut args = vec![
                "--path".into(),
                data.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ];
            if !extra.iter().any(|a| a == "--htpasswd-file") {
                args.push("--no-auth".into());
            }
            args.extend(extra.iter().cloned());
            (args, vec![])
        },
        &listening,
        Duration::from_secs(20),
    )
}

/// restic's rest-server, without authentication, serving HTTPS with the
/// certificate chain `cert` and its private key `key` (PEM files); its URL
/// is [`Server::https_url`].
pub fn rest_server_tls(cert: &Path, key: &Path) -> Server {
    rest_server(&[
        "--tls",
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ])
}

/// MinIO's root user and password in the tests.
pub const MINIO_USER: &str = "stash-test";
/// See [`MINIO_USER`].
pub const MINIO_PASSWORD: &str = "stash-test-secret";

/// A MinIO server with one root user ([`MINIO_USER`]).
pub fn minio() -> Server {
    minio_on(Ipv4Addr::LOCALHOST)
}

/// [`minio`] listening on `address` instead of loopback (pods on a real
/// test node reach the node's address, not the host's loopback); its URL is
/// then `http://<address>:<port>`.
pub fn minio_on(address: Ipv4Addr) -> Server {
    let ready = move |port: u16| {
        matches!(
            http_at(address, port, "GET", "/minio/health/ready", ""),
            Some((200, _))
        )
    };
    start_on_free_port(
        "minio",
        |port, data| {
            let console = free_port();
            (
                vec![
                    "server".into(),
                    "--quiet".into(),
                    "--address".into(),
                    format!("{address}:{port}"),
                    "--console-address".into(),
                    format!("127.0.0.1:{console}"),
                    data.display().to_string(),
                ],
                vec![
                    ("MINIO_ROOT_USER", MINIO_USER.to_string()),
                    ("MINIO_ROOT_PASSWORD", MINIO_PASSWORD.to_string()),
                    ("MINIO_BROWSER", "off".to_string()),
                    ("MINIO_UPDATE", "off".to_string()),
                    ("HOME", data.display().to_string()),
                ],
            )
        },
        &ready,
        Duration::from_secs(60),
    )
}

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Its key (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service.
pub fn azurite() -> Server {
    start_on_free_port(
        "azurite",
        |port, data| {
            (
                vec![
                    "--blobHost".into(),
                    "127.0.0.1".into(),
                    "--blobPort".into(),
                    port.to_string(),
                    "--location".into(),
                    data.display().to_string(),
                    "--skipApiVersionCheck".into(),
                    "--disableTelemetry".into(),
                    "--silent".into(),
                ],
                vec![],
            )
        },
        &listening,
        Duration::from_secs(60),
    )
}

/// fake-gcs-server over plain HTTP.
pub fn fake_gcs() -> Server {
    start_on_free_port(
        "fake-gcs-server",
        |port, data| {
            (
                vec![
                    "-scheme".into(),
                    "http".into(),
                    "-host".into(),
                    "127.0.0.1".into(),
                    "-port".into(),
                    port.to_string(),
                    "-public-host".into(),
                    format!("127.0.0.1:{port}"),
                    "-external-url".into(),
                    format!("http://127.0.0.1:{port}"),
                    "-backend".into(),
                    "filesystem".into(),
                    "-filesystem-root".into(),
                    data.display().to_string(),
                    "-log-level".into(),
                    "warn".into(),
                ],
                vec![],
            )
        },
        &|port| matches!(http(port, "GET", "/storage/v1/b", ""), Some((200, _))),
        Duration::from_secs(30),
    )
}

/// A toxiproxy server (its API on the returned port).
pub fn toxiproxy() -> Server {
    start_on_free_port(
        "toxiproxy",
        |port, _| {
            (
                vec![
                    "-host".into(),
                    "127.0.0.1".into(),
                    "-port".into(),
                    port.to_string(),
                ],
                vec![],
            )
        },
        &|port| matches!(http(port, "GET", "/version", ""), Some((200, _))),
        Duration::from_secs(20),
    )
}

impl Server {
    /// For a toxiproxy server: a proxy from a fresh loopback port to
    /// `127.0.0.1:upstream`; returns the proxy's port.
    pub fn toxiproxy_proxy(&self, name: &str, upstream: u16) -> u16 {
        let listen = free_port();
        let body = format!(
            r#"{{"name":"{name}","listen":"127.0.0.1:{listen}","upstream":"127.0.0.1:{upstream}","enabled":true}}"#
        );
        match http(self.port, "POST", "/proxies", &body) {
            Some((201, _)) => listen,
            other => panic!(
                "toxiproxy: creating proxy {name}: {other:?}\n{}",
                self.log()
            ),
        }
    }

    /// For a toxiproxy server: adds a toxic (`{"type":..., "attributes":...}`
    /// JSON without the name) to the proxy, in the given direction.
    pub fn toxiproxy_toxic(&self, proxy: &str, toxic_name: &str, json_fields: &str) {
        let body = format!(r#"{{"name":"{toxic_name}",{json_fields}}}"#);
        match http(
            self.port,
            "POST",
            &format!("/proxies/{proxy}/toxics"),
            &body,
        ) {
            Some((200, _)) => {}
            other => panic!(
                "toxiproxy: adding toxic {toxic_name}: {other:?}\n{}",
                self.log()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned_for_every_server() {
        for name in [
            "minio",
            "rest-server",
            "restic",
            "toxiproxy",
            "fake-gcs-server",
            "azurite",
            "prometheus",
        ] {
            assert!(!version(name).is_empty(), "{name}");
        }
    }

    #[test]
    fn a_missing_binary_names_the_script() {
        // Point the cache at an empty directory in a child process, so that
        // this test's environment change does not touch the others.
        if std::env::var_os("STASH_TESTKIT_CHILD").is_some() {
            bin("rest-server");
            return;
        }
        let d = crate::tempdir();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "servers::tests::a_missing_binary_names_the_script",
                "--nocapture",
            ])
            .env("STASH_TESTKIT_CHILD", "1")
            .env(CACHE_ENV, d.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("run `bash hack/test-servers.sh`"), "{text}");
    }

    #[test]
    fn rest_server_starts_and_stops() {
        let port;
        {
            let s = rest_server(&[]);
            port = s.port;
            assert!(listening(port));
        }
        // Stopped with the value.
        let start = Instant::now();
        while listening(port) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!listening(port), "rest-server still listening on {port}");
    }
}
