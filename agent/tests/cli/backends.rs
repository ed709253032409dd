//! Issue 4: the storage backends, against real servers started here on
//! loopback ports (`stash_testkit::servers`; `hack/test-servers.sh` builds
//! them): restic's rest-server, MinIO (S3), Azurite (Azure Blob) and
//! fake-gcs-server (GCS). Both Debian's restic 0.14 and a current restic
//! read, check and restore what stash writes to rest-server and MinIO, and
//! stash reads what they write there.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stash_testkit::servers::{self, Server};

use super::support::*;

/// A repository on a server: its string and the environment both tools
/// need to reach it.
struct Remote {
    /// The repository string, as for `-r` and `RESTIC_REPOSITORY`.
    repo: String,
    /// Credentials and endpoints.
    envs: Vec<(&'static str, String)>,
}

impl Remote {
    fn rest(server: &Server, path: &str) -> Remote {
        Remote {
            repo: format!("rest:{}/{path}/", server.base_url()),
            envs: vec![],
        }
    }

    fn s3(server: &Server, bucket_and_prefix: &str) -> Remote {
        Remote {
            repo: format!("s3:{}/{bucket_and_prefix}", server.base_url()),
            envs: vec![
                ("AWS_ACCESS_KEY_ID", servers::MINIO_USER.into()),
                ("AWS_SECRET_ACCESS_KEY", servers::MINIO_PASSWORD.into()),
            ],
        }
    }

    /// `stash` with this repository, the test's password and the environment.
    fn stash(&self, env: &Env) -> RemoteStash {
        RemoteStash {
            stash: Stash {
                repo: self.repo.clone(),
                password_file: env.password_file.clone(),
            },
            envs: self.envs.clone(),
        }
    }

    /// `restic` (`bin`, or Debian's when `None`) on this repository.
    fn restic(&self, env: &Env, bin: Option<&Path>, cache: &str) -> Restic {
        let mut r =
            Restic::new(self.repo.clone(), &env.password_file).with_cache_dir(env.path(cache));
        if let Some(b) = bin {
            r = r.with_bin(b);
        }
        for (k, v) in &self.envs {
            r = r.with_env(*k, v);
        }
        r
    }
}

/// [`Stash`] with extra environment variables.
struct RemoteStash {
    stash: Stash,
    envs: Vec<(&'static str, String)>,
}

impl RemoteStash {
    fn command(&self) -> Command {
        let mut c = self.stash.command();
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run stash")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "stash -r {} {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
            self.stash.repo,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs, insists on failure, returns stderr and how long it took.
    fn fails(&self, args: &[&str]) -> (String, Duration) {
        let start = Instant::now();
        let out = self.run(args);
        let took = start.elapsed();
        assert!(
            !out.status.success(),
            "stash -r {} {args:?} should have failed\nstdout:\n{}",
            self.stash.repo,
            String::from_utf8_lossy(&out.stdout)
        );
        (String::from_utf8_lossy(&out.stderr).into_owned(), took)
    }

    fn backup(&self, path: &Path, extra: &[&str]) -> String {
        let mut args = vec!["backup", "--json"];
        args.extend_from_slice(extra);
        let p = path.display().to_string();
        args.push(&p);
        let out = self.ok(&args);
        let v: serde_json::Value =
            serde_json::from_str(out.lines().last().expect("summary")).expect("json");
        v["snapshot_id"].as_str().expect("snapshot_id").to_string()
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["snapshots", "--json"])).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The restic binaries to check against: Debian's (on `PATH`) and the
/// current release built by `hack/test-servers.sh`.
fn restics() -> Vec<(String, Option<std::path::PathBuf>)> {
    vec![
        ("debian".into(), None),
        (
            format!("restic {}", servers::version("restic")),
            Some(servers::bin("restic")),
        ),
    ]
}

/// stash: init, backup, snapshots, restore (identical), check --read-data.
fn round_trip(env: &Env, remote: &Remote) {
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    let stash = remote.stash(env);
    stash.ok(&["init"]);
    let id = stash.backup(&src, &["--tag", "round-trip"]);
    assert_eq!(stash.snapshot_ids(), vec![id.clone()]);
    // A second backup: the parent is found, nothing is uploaded twice.
    let id2 = stash.backup(&src, &[]);
    assert_eq!(stash.snapshot_ids().len(), 2);
    let target = env.path("stash-restore");
    stash.ok(&["restore", &id2, "--target", target.to_str().unwrap()]);
    assert_trees_equal(&src, &restored(&target, &src), &CompareOptions::default());
    stash.ok(&["check", "--read-data"]);
}

/// Both ways between stash and each restic, on `make_remote(n)` repositories.
fn interop(env: &Env, make_remote: impl Fn(&str) -> Remote) {
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    for (i, (label, bin)) in restics().into_iter().enumerate() {
        // stash writes, restic reads, checks and restores.
        let remote = make_remote(&format!("by-stash-{i}"));
        let stash = remote.stash(env);
        stash.ok(&["init"]);
        let id = stash.backup(&src, &["--tag", "by-stash"]);
        let restic = remote.restic(env, bin.as_deref(), &format!("cache-{i}"));
        restic.check_read_data();
        let snaps = restic.snapshots_json();
        assert_eq!(snaps[0]["id"], id.as_str(), "{label}");
        let target = env.path(&format!("restic-restore-{i}"));
        restic.restore(&id, &target);
        assert_restic_restore_equal(&src, &restored(&target, &src));

        // restic writes into its own repository; stash reads and adds.
        let remote = make_remote(&format!("by-restic-{i}"));
        let restic = remote.restic(env, bin.as_deref(), &format!("cache-r{i}"));
        restic.init(2);
        restic.backup(&[&src], &["--tag", "by-restic"]);
        let stash = remote.stash(env);
        let ids = stash.snapshot_ids();
        assert_eq!(ids.len(), 1, "{label}");
        let target = env.path(&format!("stash-restore-{i}"));
        stash.ok(&["restore", &ids[0], "--target", target.to_str().unwrap()]);
        assert_restic_restore_equal(&src, &restored(&target, &src));
        stash.ok(&["check", "--read-data"]);
        stash.backup(&src, &["--tag", "by-stash-too"]);
        restic.check_read_data();
        assert_eq!(
            restic.snapshots_json().as_array().unwrap().len(),
            2,
            "{label}"
        );
    }
}

#[test]
fn rest_server_round_trip() {
    let server = servers::rest_server(&[]);
    let env = Env::new();
    round_trip(&env, &Remote::rest(&server, "repo"));
    // rest-server keeps restic's layout on its disk.
    let data = server.data_dir().join("repo");
    assert!(data.join("config").is_file());
    assert!(std::fs::read_dir(data.join("data"))
        .unwrap()
        .any(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count() > 0));
}

#[test]
fn rest_server_interop_with_restic_old_and_new() {
    let server = servers::rest_server(&[]);
    let env = Env::new();
    interop(&env, |name| Remote::rest(&server, name));
}

#[test]
fn rest_server_with_credentials_in_the_url() {
    let env = Env::new();
    let htpasswd = env.path("htpasswd");
    // User "alice", password "s3cr@t:x" ({SHA} = base64 of its SHA-1, as
    // `htpasswd -s` writes it).
    std::fs::write(&htpasswd, "alice:{SHA}In/OjPdaDZIo4e5r6Hmv3VJYNuE=\n").unwrap();
    let server = servers::rest_server(&["--htpasswd-file", htpasswd.to_str().unwrap()]);
    let anon = Remote::rest(&server, "r");
    let (err, took) = anon.stash(&env).fails(&["init"]);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("wants credentials"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let with_auth = Remote {
        repo: format!(
            "rest:http://alice:s3cr%40t%3Ax@127.0.0.1:{}/r/",
            server.port
        ),
        envs: vec![],
    };
    let stash = with_auth.stash(&env);
    stash.ok(&["init"]);
    stash.backup(&env.password_file, &[]);
    assert_eq!(stash.snapshot_ids().len(), 1);
    // The password is never printed.
    let (err, _) = with_auth.stash(&env).fails(&["cat", "snapshot", "ffff"]);
    assert!(!err.contains("s3cr"), "{err}");
}

#[test]
fn minio_round_trip_creates_the_bucket() {
    let server = servers::minio();
    let env = Env::new();
    let remote = Remote::s3(&server, "new-bucket/some/prefix");
    round_trip(&env, &remote);
    // The layout is restic's, under the prefix.
    let bucket = server.data_dir().join("new-bucket/some/prefix");
    assert!(bucket.join("config").exists(), "{bucket:?}");
    assert!(bucket.join("keys").is_dir());
    assert!(bucket.join("data").is_dir());
}

#[test]
fn minio_interop_with_restic_old_and_new() {
    let server = servers::minio();
    let env = Env::new();
    interop(&env, |name| Remote::s3(&server, &format!("{name}/repo")));
}

#[test]
fn azurite_round_trip_creates_the_container() {
    let server = servers::azurite();
    let env = Env::new();
    let remote = Remote {
        repo: "azure:stash-container:/backups/one".into(),
        envs: vec![
            ("AZURE_ACCOUNT_NAME", servers::AZURITE_ACCOUNT.into()),
            ("AZURE_ACCOUNT_KEY", servers::AZURITE_KEY.into()),
            (
                "STASH_AZURE_ENDPOINT",
                format!("{}/{}", server.base_url(), servers::AZURITE_ACCOUNT),
            ),
        ],
    };
    round_trip(&env, &remote);
}

#[test]
fn fake_gcs_round_trip_creates_the_bucket() {
    let server = servers::fake_gcs();
    let env = Env::new();
    let remote = Remote {
        repo: "gs:stash-bucket:/backups/one".into(),
        envs: vec![
            ("STASH_GCS_ENDPOINT", server.base_url()),
            ("GOOGLE_PROJECT_ID", "stash-test".into()),
        ],
    };
    round_trip(&env, &remote);
}

/// Issue 4, point 4: permanent failures cost seconds, and say what is wrong.
#[test]
fn permanent_failures_fail_fast_and_name_the_problem() {
    let server = servers::minio();
    let env = Env::new();
    let good = Remote::s3(&server, "fast-fail/repo");
    good.stash(&env).ok(&["init"]);

    let wrong_key = Remote {
        repo: good.repo.clone(),
        envs: vec![
            ("AWS_ACCESS_KEY_ID", servers::MINIO_USER.into()),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()),
        ],
    };
    let (err, took) = wrong_key.stash(&env).fails(&["snapshots"]);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(err.contains("access denied"), "{err}");
    assert!(err.contains("\"fast-fail\""), "{err}");
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");

    let missing = Remote::s3(&server, "no-such-bucket/repo");
    let (err, took) = missing.stash(&env).fails(&["snapshots"]);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(
        err.contains("bucket \"no-such-bucket\" does not exist"),
        "{err}"
    );

    // Nothing listens on a port just freed.
    let port = servers::free_port();
    for repo in [
        format!("s3:http://127.0.0.1:{port}/bucket"),
        format!("rest:http://127.0.0.1:{port}/"),
    ] {
        let unreachable = Remote {
            repo: repo.clone(),
            envs: good.envs.clone(),
        };
        let (err, took) = unreachable.stash(&env).fails(&["snapshots"]);
        assert!(
            took < Duration::from_secs(10),
            "{repo}: took {took:?}: {err}"
        );
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(
            err.to_lowercase().contains("connect"),
            "{repo}: should say it could not connect: {err}"
        );
    }
}

/// Size of the data the fault-injection test backs up, in MiB: the issue
/// asks for 1 GiB (`STASH_TEST_FAULT_MIB=1024`); the default keeps the test
/// run within CI's budget on two cores while still moving several packs
/// through every kind of fault.
const FAULT_MIB_ENV: &str = "STASH_TEST_FAULT_MIB";
const FAULT_MIB_DEFAULT: u64 = 128;

/// Writes `mib` MiB of incompressible bytes into files of at most 32 MiB.
fn random_files(dir: &Path, mib: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x: u64 = 0x5eed_1234_abcd_0042;
    let mut left = mib;
    let mut i = 0;
    while left > 0 {
        let n = left.min(32);
        let mut buf = vec![0u8; (n << 20) as usize];
        for chunk in buf.chunks_exact_mut(8) {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        std::fs::write(dir.join(format!("random-{i:03}.bin")), &buf).unwrap();
        left -= n;
        i += 1;
    }
}

/// Issue 4, point 3: through toxiproxy (latency on every connection,
/// connection resets at once or in the middle of a transfer on about 10 %
/// of them) and a proxy answering about 10 % of the requests with 503, a
/// backup to MinIO completes, restic's `check --read-data` of the result is
/// clean, and a restore through the same faults is identical.
#[test]
fn backup_and_restore_survive_resets_latency_and_server_errors() {
    let mib = std::env::var(FAULT_MIB_ENV)
        .ok()
        .map(|v| v.parse::<u64>().expect("STASH_TEST_FAULT_MIB: a number"))
        .unwrap_or(FAULT_MIB_DEFAULT);
    let minio = servers::minio();
    let faulty = stash_testkit::faults::FaultyHttp::start(minio.port, 10, 42);
    let toxi = servers::toxiproxy();
    let port = toxi.toxiproxy_proxy("s3", faulty.port);
    toxi.toxiproxy_toxic(
        "s3",
        "latency",
        r#""type":"latency","stream":"downstream","toxicity":1.0,"attributes":{"latency":10,"jitter":10}"#,
    );
    toxi.toxiproxy_toxic(
        "s3",
        "reset-at-once",
        r#""type":"reset_peer","stream":"upstream","toxicity":0.05,"attributes":{"timeout":0}"#,
    );
    toxi.toxiproxy_toxic(
        "s3",
        "reset-midway",
        r#""type":"reset_peer","stream":"upstream","toxicity":0.05,"attributes":{"timeout":150}"#,
    );

    let env = Env::new();
    let src = env.path("src");
    random_files(&src, mib);
    let direct = Remote::s3(&minio, "faults/repo");
    let through_faults = Remote {
        repo: format!("s3:http://127.0.0.1:{port}/faults/repo"),
        envs: direct.envs.clone(),
    };
    let stash = through_faults.stash(&env);
    let start = Instant::now();
    stash.ok(&["init"]);
    let id = stash.backup(&src, &[]);
    let (requests, refused) = faulty.stats.counts();
    eprintln!(
        "backup of {mib} MiB through faults: {:.1} s; {requests} requests, {refused} answered 503",
        start.elapsed().as_secs_f64(),
    );
    assert!(
        refused > 0,
        "no fault was injected: the test proves nothing"
    );

    // restic reads MinIO directly: what is stored is whole and correct.
    let restic = direct.restic(&env, None, "cache");
    let report = restic.check_read_data();
    assert!(report.contains("no errors were found"), "{report}");

    let target = env.path("restore");
    stash.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_trees_equal(&src, &restored(&target, &src), &CompareOptions::default());
    let (requests, refused) = faulty.stats.counts();
    eprintln!(
        "with restore: {:.1} s; {requests} requests, {refused} answered 503",
        start.elapsed().as_secs_f64(),
    );
}

/// A throwaway certificate authority and a server certificate it signed for
/// 127.0.0.1 (an IP subject alternative name), made by the `openssl` CLI.
struct TestPki {
    /// The CA's certificate (PEM), for `--cacert`.
    ca: std::path::PathBuf,
    /// The server's certificate (PEM).
    cert: std::path::PathBuf,
    /// The server's private key (PEM).
    key: std::path::PathBuf,
}

/// Runs `openssl args` in `dir`, insisting on success.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA named `name` and a server certificate for 127.0.0.1 signed by
/// it, in `dir` (created).
fn test_pki(dir: &Path, name: &str) -> TestPki {
    std::fs::create_dir_all(dir).unwrap();
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    TestPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// `rest:https://127.0.0.1:<port>/<path>/` with `extra` global flags
/// (`--cacert`, `--insecure-tls`) before the command.
struct TlsRemote {
    stash: RemoteStash,
    flags: Vec<String>,
}

impl TlsRemote {
    fn new(env: &Env, server: &Server, path: &str, flags: &[&str]) -> TlsRemote {
        let remote = Remote {
            repo: format!("rest:{}/{path}/", server.https_url()),
            envs: vec![],
        };
        TlsRemote {
            stash: remote.stash(env),
            flags: flags.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        all
    }

    fn ok(&self, args: &[&str]) -> String {
        self.stash.ok(&self.args(args))
    }

    fn fails(&self, args: &[&str]) -> (String, Duration) {
        self.stash.fails(&self.args(args))
    }
}

/// `--cacert` makes a server whose certificate a private CA signed trusted:
/// init, backup, restore (identical) and check all work over HTTPS, and
/// the data lands on the server.
#[test]
fn rest_server_over_tls_with_a_private_ca() {
    let env = Env::new();
    let pki = test_pki(&env.path("pki"), "Stash Test CA");
    let server = servers::rest_server_tls(&pki.cert, &pki.key);
    let ca = pki.ca.to_str().unwrap();
    let remote = TlsRemote::new(&env, &server, "repo", &["--cacert", ca]);

    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    remote.ok(&["init"]);
    let out = remote.ok(&["backup", "--json", src.to_str().unwrap()]);
    let v: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("summary")).expect("json");
    let id = v["snapshot_id"].as_str().expect("snapshot_id").to_string();
    let snaps: serde_json::Value =
        serde_json::from_str(&remote.ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["id"], id.as_str());
    let target = env.path("restore");
    remote.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_trees_equal(&src, &restored(&target, &src), &CompareOptions::default());
    remote.ok(&["check", "--read-data"]);
    assert!(server.data_dir().join("repo/config").is_file());

    // The option may be given after the command too (it is global).
    let ids: serde_json::Value =
        serde_json::from_str(&remote.stash.ok(&["snapshots", "--json", "--cacert", ca]))
            .expect("json");
    assert_eq!(ids.as_array().unwrap().len(), 1);
}

/// Without `--cacert`, or with the certificate of another CA, a private
/// server certificate is refused: in seconds, saying it is about the
/// certificate, without a panic, and without touching the server's disk.
#[test]
fn rest_server_over_tls_refuses_an_untrusted_certificate() {
    let env = Env::new();
    let pki = test_pki(&env.path("pki"), "Stash Test CA");
    let other = test_pki(&env.path("other-pki"), "Some Other CA");
    let server = servers::rest_server_tls(&pki.cert, &pki.key);
    let other_ca = other.ca.to_str().unwrap();
    for flags in [vec![], vec!["--cacert", other_ca]] {
        let remote = TlsRemote::new(&env, &server, "repo", &flags);
        for cmd in [&["init"][..], &["snapshots"][..]] {
            let (err, took) = remote.fails(cmd);
            assert!(
                took < Duration::from_secs(10),
                "{flags:?} {cmd:?}: took {took:?}: {err}"
            );
            assert!(
                err.to_lowercase().contains("certificate"),
                "{flags:?} {cmd:?}: should say the certificate is the problem: {err}"
            );
            assert!(
                err.contains(&format!("127.0.0.1:{}", server.port)),
                "{flags:?} {cmd:?}: should name the server: {err}"
            );
            assert!(!err.contains("panicked"), "{flags:?} {cmd:?}: {err}");
        }
    }
    // The right CA does not make a certificate valid for another name: it
    // is for 127.0.0.1 only, not for "localhost".
    let by_name = TlsRemote {
        stash: Remote {
            repo: format!("rest:https://localhost:{}/repo/", server.port),
            envs: vec![],
        }
        .stash(&env),
        flags: vec!["--cacert".into(), pki.ca.display().to_string()],
    };
    let (err, took) = by_name.fails(&["init"]);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(
        err.contains("certificate not valid for name \"localhost\""),
        "{err}"
    );
    assert!(
        !server.data_dir().join("repo").exists(),
        "nothing may be written through an untrusted connection"
    );
}

/// `--insecure-tls` accepts the certificate without knowing its CA.
#[test]
fn rest_server_over_tls_with_insecure_tls() {
    let env = Env::new();
    let pki = test_pki(&env.path("pki"), "Stash Test CA");
    let server = servers::rest_server_tls(&pki.cert, &pki.key);
    let remote = TlsRemote::new(&env, &server, "repo", &["--insecure-tls"]);
    remote.ok(&["init"]);
    let out = remote.ok(&["backup", "--json", env.password_file.to_str().unwrap()]);
    assert!(out.contains("snapshot_id"), "{out}");
    let snaps: serde_json::Value =
        serde_json::from_str(&remote.ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    remote.ok(&["check", "--read-data"]);
    assert!(server.data_dir().join("repo/config").is_file());
}

/// `--cacert` with a file that is not there fails at once, naming it (and
/// before contacting the server: nothing is created there).
#[test]
fn rest_server_over_tls_with_a_missing_ca_file() {
    let env = Env::new();
    let pki = test_pki(&env.path("pki"), "Stash Test CA");
    let server = servers::rest_server_tls(&pki.cert, &pki.key);
    let missing = env.path("no-such-ca.pem");
    let remote = TlsRemote::new(
        &env,
        &server,
        "repo",
        &["--cacert", missing.to_str().unwrap()],
    );
    let (err, took) = remote.fails(&["init"]);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(
        err.contains(&missing.display().to_string()),
        "should name the missing file: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!server.data_dir().join("repo").exists());
}
