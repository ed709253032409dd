//! A real Kubernetes control plane for tests: etcd and kube-apiserver, like
//! controller-runtime's envtest.
//!
//! [`Envtest::start`] runs both on free loopback ports with certificates and
//! a service-account key made for this instance (with the `openssl` command),
//! writes a kubeconfig for a `system:masters` user, and waits until the
//! apiserver is ready; [`Envtest::install_crds`] installs CustomResource-
//! Definitions and waits until they are established. Dropping the
//! [`Envtest`] kills both processes and removes their directory.
//!
//! The binaries are built from source by `hack/envtest.sh` (which
//! `hack/test.sh` runs) into `~/.cache/stash-envtest/<version>/`, or
//! `$STASH_ENVTEST_DIR`. Tests that need them fail, never skip, when they are
//! missing, and say how to build them.
//!
//! There is no kubelet, scheduler or controller-manager: pods are created
//! with `spec.nodeName` set and stay as written, the `ServiceAccount`
//! admission plugin is off (nothing would create the `default` account), and
//! namespaces never finish terminating — give each test its own.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod cluster;
pub use cluster::Cluster;

/// Environment variable naming the directory holding `etcd` and
/// `kube-apiserver`, instead of the one `hack/envtest.sh --path` prints.
pub const ENVTEST_DIR_ENV: &str = "STASH_ENVTEST_DIR";

/// How long the apiserver may take to become ready. A cold start on a busy
/// two-core machine takes several seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How [`Envtest::start_with`] runs the apiserver; [`Default`] is what
/// [`Envtest::start`] does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The address the apiserver listens on, advertises and is reached at
    /// (its certificate names it). Loopback by default; a real node's pods
    /// need one they can route to.
    pub address: Ipv4Addr,
    /// Runs the `ServiceAccount` admission plugin (pods get a token volume;
    /// needs kube-controller-manager to create each namespace's `default`
    /// account).
    pub service_accounts: bool,
    /// More subject alternative names for the serving certificate, as
    /// `IP:10.0.0.1` or `DNS:kubernetes.default.svc`.
    pub extra_sans: Vec<String>,
    /// More kube-apiserver flags.
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            address: Ipv4Addr::LOCALHOST,
            service_accounts: false,
            extra_sans: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

/// A running etcd + kube-apiserver pair, stopped when dropped.
#[derive(Debug)]
pub struct Envtest {
    /// Certificates, keys, kubeconfig, etcd data and process logs.
    dir: tempfile::TempDir,
    /// The etcd process.
    etcd: Child,
    /// The kube-apiserver process.
    apiserver: Child,
    /// `https://127.0.0.1:<port>`.
    server: String,
}

impl Envtest {
    /// Starts etcd and kube-apiserver and waits until the apiserver is ready.
    ///
    /// Panics, with the reason and the tail of the failing process's log,
    /// when the binaries are missing or the control plane does not come up:
    /// there is nothing a test can do about either.
    pub async fn start() -> Envtest {
        Envtest::start_with(Options::default()).await
    }

    /// [`Envtest::start`] with other [`Options`].
    pub async fn start_with(options: Options) -> Envtest {
        let bin = binaries_dir();
        let etcd_bin = bin.join("etcd");
        let apiserver_bin = bin.join("kube-apiserver");
        for b in [&etcd_bin, &apiserver_bin] {
            assert!(
                b.is_file(),
                "{} is missing: run `bash hack/envtest.sh` (hack/test.sh does) to build \
                 kube-apiserver and etcd for the tests, or set {ENVTEST_DIR_ENV}",
                b.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("stash-envtest-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let d = dir.path();
        let mut sans = format!("IP:127.0.0.1,DNS:localhost,IP:{}", options.address);
        for san in &options.extra_sans {
            sans.push(',');
            sans.push_str(san);
        }
        make_certificates(d, &sans);

        let [etcd_client, etcd_peer, secure] = free_ports();
        let etcd = spawn(
            &etcd_bin,
            &[
                "--name=envtest".into(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=envtest=http://127.0.0.1:{etcd_peer}"),
                // Test data need not survive a power cut; fsync dominates
                // etcd's latency on a shared disk.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &d.join("etcd.log"),
        );
        let pki = |f: &str| d.join(f).display().to_string();
        let address = options.address;
        let server = format!("https://{address}:{secure}");
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", d.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", pki("server.crt")),
            format!("--tls-private-key-file={}", pki("server.key")),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            format!("--service-account-issuer={server}"),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--v=0".into(),
        ];
        if !options.service_accounts {
            args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        args.extend(options.extra_args.iter().cloned());
        let apiserver = spawn(&apiserver_bin, &args, &d.join("kube-apiserver.log"));
        let mut env = Envtest {
            dir,
            etcd,
            apiserver,
            server,
        };
        env.write_kubeconfig();
        env.wait_ready().await;
        env
    }

    /// Path of a kubeconfig for an administrator (`system:masters`), for
    /// `kubectl --kubeconfig` and for processes under test (`KUBECONFIG`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A file of this instance's PKI: `ca.crt`, `ca.key`, `sa.key`,
    /// `sa.pub`, `admin.crt`, `admin.key`.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The apiserver's URL, `https://<address>:<port>` (127.0.0.1 unless
    /// [`Options::address`] says otherwise).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A client authenticated as the administrator.
    pub async fn client(&self) -> Client {
        install_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.kubeconfig().display()));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("bad envtest kubeconfig: {e}"));
        Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"))
    }

    /// Installs (server-side applies) `crds` and waits until each is
    /// established, so objects of its kinds can be created right away.
    pub async fn install_crds(&self, crds: impl IntoIterator<Item = CustomResourceDefinition>) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let params = PatchParams::apply("stash-envtest").force();
        let mut names = Vec::new();
        for crd in crds {
            let name = crd.metadata.name.clone().expect("a CRD has a name");
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("cannot install CRD {name}: {e}"));
            names.push(name);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for name in names {
            loop {
                let crd = api
                    .get(&name)
                    .await
                    .unwrap_or_else(|e| panic!("cannot read CRD {name}: {e}"));
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "CRD {name} not established after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The last lines of the apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self) -> String {
        log_tail(&self.dir.path().join("kube-apiserver.log"))
    }

    /// Writes the kubeconfig that [`Envtest::kubeconfig`] names.
    fn write_kubeconfig(&self) {
        let d = self.dir.path();
        let mut text = String::new();
        let _ = write!(
            text,
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: envtest\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n\
             - name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
             contexts:\n\
             - name: envtest\n  context:\n    cluster: envtest\n    user: admin\n    namespace: default\n\
             current-context: envtest\n",
            server = self.server,
            ca = d.join("ca.crt").display(),
            crt = d.join("admin.crt").display(),
            key = d.join("admin.key").display(),
        );
        fs::write(self.kubeconfig(), text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.kubeconfig().display()));
    }

    /// Polls `/readyz` until it answers `ok`; panics with the logs if a
    /// process exits or the time runs out.
    async fn wait_ready(&mut self) {
        let client = self.client().await;
        let start = Instant::now();
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a static request is valid");
            let last_error = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            let exited = [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ]
            .into_iter()
            .find_map(|(name, child)| Some((name, child.try_wait().ok()??)));
            if let Some((name, status)) = exited {
                panic!(
                    "{name} exited ({status}) before the apiserver was ready\n\
                     --- kube-apiserver log ---\n{}\n--- etcd log ---\n{}",
                    self.apiserver_log_tail(),
                    log_tail(&self.dir.path().join("etcd.log"))
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "kube-apiserver not ready after {READY_TIMEOUT:?} (last answer: {last_error})\n\
                     --- kube-apiserver log ---\n{}\n--- etcd log ---\n{}",
                    self.apiserver_log_tail(),
                    log_tail(&self.dir.path().join("etcd.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Envtest {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes ring rustls's process-wide crypto provider. kube's TLS uses ring,
/// but when the workspace also enables aws-lc-rs (reqwest does, for the
/// storage backends) rustls refuses to guess. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The directory holding the binaries: `$STASH_ENVTEST_DIR`, else what
/// `hack/envtest.sh --path` prints (the script owns the version and cache
/// layout).
pub(crate) fn binaries_dir() -> PathBuf {
    script_dir(ENVTEST_DIR_ENV, "envtest.sh")
}

/// `$env` when set, else the directory `hack/<script> --path` prints: each
/// build script owns its versions and cache layout.
pub(crate) fn script_dir(env: &str, script: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(env) {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hack")
        .join(script);
    let out = Command::new("bash")
        .arg(&script)
        .arg("--path")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} --path failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Three loopback ports that were free a moment ago. Another process may
/// take one before our child binds it; then the start fails loudly rather
/// than talk to a stranger (the apiserver checks its client certificate).
pub(crate) fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
        })
        .collect();
    let port = |l: &TcpListener| l.local_addr().expect("bound socket").port();
    [
        port(&listeners[0]),
        port(&listeners[1]),
        port(&listeners[2]),
    ]
}

/// Spawns `bin` with its output in `log`, killed if the test process dies
/// (`setpriv --pdeathsig`, when util-linux has it), so a crashed test leaves
/// no apiserver behind.
pub(crate) fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let out = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone a file handle");
    let mut cmd = if Path::new("/usr/bin/setpriv").is_file() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg("--pdeathsig=KILL").arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// The last 40 lines of a log file.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Makes, in `dir`: a CA (`ca.crt`), the apiserver's serving certificate for
/// 127.0.0.1 and localhost (`server.crt`/`.key`), an administrator's client
/// certificate in group `system:masters` (`admin.crt`/`.key`) and the
/// service-account signing key (`sa.key`, public half `sa.pub`). P-256 keys: fast to make.
fn make_certificates(dir: &Path, sans: &str) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl (the envtest certificates need it): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = |name: &str| {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ])
    };
    key("ca.key");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=stash-envtest-ca",
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.crt",
    ]);
    let leaf = |name: &str, serial: &str, subject: &str, extensions: &str| {
        key(&format!("{name}.key"));
        openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &format!("{name}.csr"),
        ]);
        fs::write(dir.join(format!("{name}.ext")), extensions).expect("write extensions file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "3650",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    };
    leaf(
        "server",
        "2",
        "/CN=kube-apiserver",
        &format!(
            "subjectAltName={sans}\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n"
        ),
    );
    leaf(
        "admin",
        "3",
        "/O=system:masters/CN=stash-envtest-admin",
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    key("sa.key");
    openssl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}
