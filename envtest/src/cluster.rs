//! A real Kubernetes cluster on this machine: the [`Envtest`] control plane
//! (etcd, kube-apiserver) plus kube-controller-manager and kube-scheduler,
//! and one real node: containerd (CRI) with runc and the CNI bridge
//! plugins, the kubelet, and kube-proxy (the `kubernetes` Service's cluster
//! IP is how pods reach the apiserver).
//!
//! Everything is built from source: the Kubernetes binaries by
//! `hack/envtest.sh`, containerd, runc and the CNI plugins by
//! `hack/node.sh`, the images by `hack/images.sh`. A test that needs them
//! fails, never skips, when they are missing, and says how to build them.
//!
//! [`Cluster::start`] needs root (mounts, cgroups, network devices). All
//! state lives under one directory (`/tmp/stash-cluster-*`), bind-mounted
//! on itself and made `rshared` so `mountPropagation` works. Dropping the
//! [`Cluster`] stops every process it started (and every container, by its
//! cgroup), unmounts what the kubelet and containerd mounted, deletes the
//! CNI bridge and kube-proxy's iptables rules, puts back the host sysctls
//! the kubelet and kube-proxy change, and removes the host paths they
//! create (`/var/lib/kubelet/device-plugins`, `/var/log/containers`,
//! `/run/containerd`, ...) when they did not exist before. When the test is
//! panicking, the last lines of every process's log are printed and the logs
//! are kept (the path is printed).
//!
//! What this machine taught (see deploy/README.md, "Tests on a real node"):
//! the kubelet refuses cgroup v1 unless `failCgroupV1: false`; cgroupfs
//! driver; `--node-ip` must not be loopback; runc needs the seccomp tag;
//! containerd needs `restrict_oom_score_adj` (no `CAP_SYS_RESOURCE`);
//! hostPath volumes do not appear under the pod directory.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::Api;
use kube::Client;

use crate::{binaries_dir, free_ports, log_tail, spawn, Envtest, Options};

/// Environment variable naming the directory `hack/node.sh` builds into.
pub const NODE_DIR_ENV: &str = "STASH_NODE_DIR";
/// Environment variable overriding the node's IP (default: the first global
/// IPv4 address of this machine).
pub const NODE_IP_ENV: &str = "STASH_NODE_IP";

/// The node's name.
pub const NODE_NAME: &str = "stash-node-1";
/// The pod network (one /24 on the node's bridge).
const POD_SUBNET: &str = "10.213.0.0/24";
/// The CNI bridge (15 characters at most).
const BRIDGE: &str = "stashcni0";
/// The service network; the apiserver takes the first address.
const SERVICE_SUBNET: &str = "10.0.0.0/24";
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// Host sysctls the kubelet or kube-proxy may change; restored on drop.
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

/// Host paths the kubelet, containerd or the CNI plugins create whatever
/// their configuration says; removed on drop when they did not exist before.
const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/var/run/containerd",
    "/opt/containerd",
    "/var/lib/cni",
    "/run/netns",
    "/etc/cni",
];

/// A control plane and one real node, torn down when dropped.
pub struct Cluster {
    // Dropped last (declared last): stops etcd and the apiserver after the
    // node is gone.
    /// `/tmp/stash-cluster-*`: node state, configuration, logs.
    dir: PathBuf,
    /// Processes in start order (stopped in reverse).
    processes: Vec<(&'static str, Child)>,
    node_ip: Ipv4Addr,
    /// The cgroup root the kubelet puts `kubepods` under.
    cgroup_root: String,
    kubelet_port: u16,
    sysctls: BTreeMap<&'static str, String>,
    absent_host_paths: Vec<&'static str>,
    k8s_bin: PathBuf,
    node_bin: PathBuf,
    /// We made the host's `/` a shared mount (it was private) and make it
    /// private again on drop.
    root_made_shared: bool,
    env: Option<Envtest>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("node_ip", &self.node_ip)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the control plane and the node, imports the OCI image archives
    /// `images` (from `hack/images.sh`) into containerd, and waits until the
    /// node is Ready and the `default` ServiceAccount exists.
    pub async fn start(images: &[PathBuf]) -> Cluster {
        let started = Instant::now();
        let k8s_bin = binaries_dir();
        let node_bin = node_dir();
        for b in [
            "kubelet",
            "kube-controller-manager",
            "kube-scheduler",
            "kube-proxy",
            "kubectl",
        ] {
            assert!(
                k8s_bin.join(b).is_file(),
                "{} is missing: run `bash hack/envtest.sh` (hack/test.sh does) to build the \
                 Kubernetes binaries",
                k8s_bin.join(b).display()
            );
        }
        for b in [
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "runc",
            "cni/bridge",
            "cni/host-local",
            "cni/loopback",
        ] {
            assert!(
                node_bin.join(b).is_file(),
                "{} is missing: run `bash hack/node.sh` (hack/test.sh does) to build containerd, \
                 runc and the CNI plugins, or set {NODE_DIR_ENV}",
                node_bin.join(b).display()
            );
        }
        let is_root = fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        assert!(
            is_root,
            "a real node needs root (mounts, cgroups, network devices)"
        );
        let node_ip = node_ip();

        let dir = tempfile::Builder::new()
            .prefix("stash-cluster-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
            .keep();
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a temporary directory has a name")
            .to_string();
        for d in [
            "logs",
            "kubelet",
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "pod-logs",
        ] {
            fs::create_dir_all(dir.join(d)).expect("create cluster directories");
        }

        let mut cluster = Cluster {
            sysctls: SYSCTLS
                .iter()
                .filter_map(|s| Some((*s, fs::read_to_string(format!("/proc/sys/{s}")).ok()?)))
                .collect(),
            absent_host_paths: HOST_PATHS
                .iter()
                .copied()
                .filter(|p| fs::symlink_metadata(p).is_err())
                .collect(),
            dir: dir.clone(),
            processes: Vec::new(),
            node_ip,
            cgroup_root: format!("/{id}"),
            kubelet_port: 0,
            k8s_bin: k8s_bin.clone(),
            node_bin: node_bin.clone(),
            root_made_shared: false,
            env: None,
        };
        // deploy/agent.yaml mounts the host's / with HostToContainer
        // propagation, which containerd allows only from a shared or slave
        // mount (systemd makes / shared on every distribution; this
        // machine's is private).
        if !root_is_shared() {
            run("mount", &["--make-shared", "/"]);
            cluster.root_made_shared = true;
        }
        // Mount propagation (HostToContainer, Bidirectional) needs a shared
        // mount; this machine's / is private.
        run("mount", &["--bind", path(&dir), path(&dir)]);
        run("mount", &["--make-rshared", path(&dir)]);

        let env = Envtest::start_with(Options {
            address: node_ip,
            service_accounts: true,
            extra_sans: vec![
                format!("IP:{KUBERNETES_SERVICE_IP}"),
                "DNS:kubernetes".into(),
                "DNS:kubernetes.default".into(),
                "DNS:kubernetes.default.svc".into(),
                "DNS:kubernetes.default.svc.cluster.local".into(),
            ],
            extra_args: vec![
                format!("--service-cluster-ip-range={SERVICE_SUBNET}"),
                // Webhooks and aggregated APIs are called at an endpoint's
                // pod IP: the apiserver runs outside the pod network.
                "--enable-aggregator-routing=true".into(),
            ],
        })
        .await;
        let kubeconfig = env.kubeconfig();
        let client = env.client().await;
        cluster.env = Some(env);
        let kc = format!("--kubeconfig={}", kubeconfig.display());
        let env = cluster.env.as_ref().expect("just set");
        let ca = env.pki("ca.crt");
        let sa_key = env.pki("sa.key");

        cluster.spawn(
            "kube-controller-manager",
            &k8s_bin.join("kube-controller-manager"),
            &[
                kc.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--root-ca-file={}", ca.display()),
                format!("--service-account-private-key-file={}", sa_key.display()),
                format!("--service-cluster-ip-range={SERVICE_SUBNET}"),
                "--controllers=*".into(),
                "--concurrent-gc-syncs=5".into(),
                "--v=1".into(),
            ],
            &[],
        );
        cluster.spawn(
            "kube-scheduler",
            &k8s_bin.join("kube-scheduler"),
            &[
                kc.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ],
            &[],
        );

        cluster.start_containerd();
        cluster.import_images(images);
        cluster.start_kubelet(&kubeconfig);
        cluster.start_kube_proxy(&kubeconfig);

        cluster.wait_ready(&client).await;
        eprintln!(
            "cluster: node {NODE_NAME} ({node_ip}) Ready {:.1} s after start; state in {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        cluster
    }

    /// The control plane.
    pub fn envtest(&self) -> &Envtest {
        self.env.as_ref().expect("the control plane runs")
    }

    /// The administrator's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.envtest().kubeconfig()
    }

    /// A client authenticated as the administrator.
    pub async fn client(&self) -> Client {
        self.envtest().client().await
    }

    /// The node's address: the apiserver listens here, and pods reach
    /// servers of the test on it.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// The kubelet's root directory (`--root-dir`).
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// A directory for the test on the node's host filesystem (for hostPath
    /// volumes and local PersistentVolumes), inside the cluster's state
    /// directory so that it goes away with it.
    pub fn host_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join("host").join(name);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        d
    }

    /// Runs `kubectl` with the administrator's kubeconfig; panics with its
    /// output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(self.k8s_bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last lines of every process's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<_> = fs::read_dir(self.dir.join("logs"))
            .map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        names.sort();
        for p in names {
            out.push_str(&format!("--- {} ---\n{}\n", p.display(), log_tail(&p)));
        }
        if let Some(env) = &self.env {
            out.push_str(&format!(
                "--- kube-apiserver ---\n{}\n",
                env.apiserver_log_tail()
            ));
        }
        out
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String], env: &[(&str, String)]) {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let child = if env.is_empty() {
            spawn(bin, args, &log)
        } else {
            let out = fs::File::create(&log).expect("create a log file");
            let err = out.try_clone().expect("clone a file handle");
            let mut c = Command::new("/usr/bin/setpriv");
            c.arg("--pdeathsig=KILL").arg("--").arg(bin).args(args);
            for (k, v) in env {
                c.env(k, v);
            }
            c.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
        };
        self.processes.push((name, child));
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    fn start_containerd(&mut self) {
        let d = &self.dir;
        let c = d.join("containerd");
        let config = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = "{sock}.debug"

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "{opt}"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10.2'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'
          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
            BinaryName = "{runc}"
            SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"#,
            root = c.join("root").display(),
            state = c.join("state").display(),
            sock = self.containerd_socket().display(),
            opt = c.join("opt").display(),
            runc = self.node_bin.join("runc").display(),
            cni_bin = self.node_bin.join("cni").display(),
            cni_conf = d.join("cni/net.d").display(),
        );
        fs::write(c.join("config.toml"), config).expect("write containerd's config");
        let cni = format!(
            r#"{{"cniVersion": "1.0.0", "name": "stash", "plugins": [{{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true, "ipam": {{"type": "host-local", "dataDir": "{ipam}", "ranges": [[{{"subnet": "{POD_SUBNET}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}}]}}"#,
            ipam = d.join("cni/ipam").display()
        );
        fs::write(d.join("cni/net.d/10-stash.conflist"), cni).expect("write the CNI config");
        let path_env = format!(
            "{}:{}",
            self.node_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let bin = self.node_bin.join("containerd");
        self.spawn(
            "containerd",
            &bin,
            &[format!("--config={}", c.join("config.toml").display())],
            &[("PATH", path_env)],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.containerd_socket().exists() {
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "containerd did not open its socket in 30 s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr -n k8s.io images import` of each archive.
    fn import_images(&self, images: &[PathBuf]) {
        for image in images {
            let out = Command::new(self.node_bin.join("ctr"))
                .arg(format!("--address={}", self.containerd_socket().display()))
                .args(["-n", "k8s.io", "images", "import"])
                .arg(image)
                .output()
                .unwrap_or_else(|e| panic!("cannot run ctr: {e}"));
            assert!(
                out.status.success(),
                "ctr images import {} failed: {}{}\n{}",
                image.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
    }

    /// Makes our cgroup root in every hierarchy (the kubelet wants it to
    /// exist); a v1 cpuset needs its CPUs and memory nodes set before it can
    /// hold processes.
    fn make_cgroup_root(&self) {
        for controller in cgroup_controllers() {
            let base = Path::new("/sys/fs/cgroup").join(&controller);
            let root = base.join(self.cgroup_root.trim_start_matches('/'));
            let _ = fs::create_dir_all(&root);
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(base.join(f)) {
                    let _ = fs::write(root.join(f), v.trim());
                }
            }
        }
    }

    fn start_kubelet(&mut self, kubeconfig: &Path) {
        self.make_cgroup_root();
        let [port, healthz, _] = free_ports();
        self.kubelet_port = port;
        let d = &self.dir;
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: "{cgroup_root}"
cgroupsPerQOS: true
containerRuntimeEndpoint: "unix://{sock}"
address: "{node_ip}"
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
failSwapOn: false
protectKernelDefaults: false
podLogsDir: "{pod_logs}"
volumePluginDir: "{plugins}"
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 8760h
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 2s
"#,
            cgroup_root = self.cgroup_root,
            sock = self.containerd_socket().display(),
            node_ip = self.node_ip,
            pod_logs = d.join("pod-logs").display(),
            plugins = d.join("kubelet-plugins").display(),
        );
        let config_path = d.join("kubelet.yaml");
        fs::write(&config_path, config).expect("write the kubelet's config");
        let bin = self.k8s_bin.join("kubelet");
        let path_env = format!(
            "{}:{}",
            self.node_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let root = self.kubelet_root();
        self.spawn(
            "kubelet",
            &bin,
            &[
                format!("--config={}", config_path.display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", root.display()),
                format!("--node-ip={}", self.node_ip),
                format!("--hostname-override={NODE_NAME}"),
                "--v=2".into(),
            ],
            &[("PATH", path_env)],
        );
    }

    fn start_kube_proxy(&mut self, kubeconfig: &Path) {
        let bin = self.k8s_bin.join("kube-proxy");
        let [metrics, healthz, _] = free_ports();
        self.spawn(
            "kube-proxy",
            &bin,
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--hostname-override={NODE_NAME}"),
                "--proxy-mode=iptables".into(),
                format!("--cluster-cidr={POD_SUBNET}"),
                format!("--metrics-bind-address=127.0.0.1:{metrics}"),
                format!("--healthz-bind-address=127.0.0.1:{healthz}"),
                // Leave the host's conntrack table size alone.
                "--conntrack-max-per-core=0".into(),
                "--v=1".into(),
            ],
            &[],
        );
    }

    /// Panics with the logs if a process has exited.
    fn check_alive(&mut self) {
        let exited = self
            .processes
            .iter_mut()
            .find_map(|(name, child)| Some((*name, child.try_wait().ok()??)));
        if let Some((name, status)) = exited {
            panic!("{name} exited ({status})\n{}", self.logs());
        }
    }

    async fn wait_ready(&mut self, client: &Client) {
        let nodes: Api<Node> = Api::all(client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            self.check_alive();
            let ready = nodes
                .get_opt(NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            let account = accounts.get_opt("default").await.ok().flatten().is_some();
            if ready && account {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {NODE_NAME} not Ready (or no default ServiceAccount) after 180 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the kubelet, kube-proxy and containerd, kills every container
    /// (by the kubelet's cgroups and containerd's shims), unmounts, and puts
    /// the host back.
    fn teardown(&mut self) {
        // The node first: kubelet and kube-proxy, then the controllers.
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_containers();
        // kube-proxy's iptables chains.
        let _ = Command::new(self.k8s_bin.join("kube-proxy"))
            .args(["--cleanup", "--proxy-mode=iptables"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_kube_chains();
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
        // Every mount under the state directory (deepest first), and the
        // directory's own bind mount.
        for _ in 0..3 {
            let mut mounts = mounts_under(&self.dir);
            mounts.extend(mounts_under(Path::new("/run/containerd")));
            if mounts.is_empty() {
                break;
            }
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                let _ = Command::new("umount")
                    .args(["-l", &m])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.remove_cgroups();
        if self.root_made_shared {
            let _ = Command::new("mount").args(["--make-private", "/"]).status();
        }
        for (name, value) in &self.sysctls {
            let p = format!("/proc/sys/{name}");
            if fs::read_to_string(&p).ok().as_deref() != Some(value.as_str()) {
                if let Err(e) = fs::write(&p, value) {
                    eprintln!("cluster: cannot restore {p} to {}: {e}", value.trim());
                }
            }
        }
        for p in &self.absent_host_paths {
            if fs::symlink_metadata(p).is_ok() {
                let _ = fs::remove_dir_all(p);
            }
        }
    }

    /// Every process in a cgroup under our cgroup root (the containers),
    /// and every shim of our containerd, killed.
    fn kill_containers(&self) {
        for _ in 0..5 {
            let mut pids = Vec::new();
            for controller in cgroup_controllers() {
                let root = Path::new("/sys/fs/cgroup")
                    .join(&controller)
                    .join(self.cgroup_root.trim_start_matches('/'));
                collect_procs(&root, &mut pids);
            }
            pids.extend(self.shim_pids());
            pids.sort_unstable();
            pids.dedup();
            if pids.is_empty() {
                return;
            }
            for pid in &pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Processes of our `containerd-shim-runc-v2` (its command line names
    /// our containerd's socket).
    fn shim_pids(&self) -> Vec<u32> {
        let sock = self.containerd_socket().display().to_string();
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim-runc-v2") && cmdline.contains(&sock) {
                pids.push(pid);
            }
        }
        pids
    }

    fn remove_cgroups(&self) {
        for controller in cgroup_controllers() {
            let root = Path::new("/sys/fs/cgroup")
                .join(&controller)
                .join(self.cgroup_root.trim_start_matches('/'));
            remove_cgroup_tree(&root);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("cluster: the test failed; logs:\n{}", self.logs());
        }
        self.teardown();
        let logs = self.dir.join("logs");
        if failed {
            let keep = std::env::temp_dir().join(format!(
                "{}-logs",
                self.dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = fs::create_dir_all(&keep);
            for e in fs::read_dir(&logs).into_iter().flatten().flatten() {
                let _ = fs::copy(e.path(), keep.join(e.file_name()));
            }
            if let Some(env) = &self.env {
                let _ = fs::write(keep.join("kube-apiserver.log"), env.apiserver_log_tail());
            }
            eprintln!("cluster: logs kept in {}", keep.display());
        }
        self.env = None;
        if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "cluster: {} still has mounts; left in place",
                self.dir.display()
            );
        }
    }
}

/// The directory `hack/node.sh --path` prints, or `$STASH_NODE_DIR`.
fn node_dir() -> PathBuf {
    crate::script_dir(NODE_DIR_ENV, "node.sh")
}

/// `$STASH_NODE_IP`, else the first global IPv4 address (the kubelet
/// refuses a loopback node IP).
fn node_ip() -> Ipv4Addr {
    if let Ok(ip) = std::env::var(NODE_IP_ENV) {
        return ip
            .parse()
            .unwrap_or_else(|e| panic!("{NODE_IP_ENV}={ip}: {e}"));
    }
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(BRIDGE))
        .find_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            cidr.split('/').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no global IPv4 address for the node (set {NODE_IP_ENV})"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("state paths are UTF-8")
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// The iptables chains the kubelet leaves behind (`KUBE-KUBELET-CANARY`,
/// `KUBE-FIREWALL`, `KUBE-IPTABLES-HINT`, in every table, v4 and v6): only
/// Kubernetes names chains `KUBE-*`. Rules jumping to them go first.
fn remove_kube_chains() {
    for cmd in ["iptables", "ip6tables"] {
        for table in ["nat", "filter", "mangle"] {
            let Ok(out) = Command::new(cmd)
                .args(["-w", "-t", table, "-S"])
                .stderr(Stdio::null())
                .output()
            else {
                continue;
            };
            let rules = String::from_utf8_lossy(&out.stdout).into_owned();
            for rule in rules
                .lines()
                .filter(|l| l.starts_with("-A ") && l.contains(" -j KUBE-"))
            {
                let mut args = vec!["-w", "-t", table, "-D"];
                args.extend(rule.split_whitespace().skip(1));
                let _ = Command::new(cmd).args(&args).stderr(Stdio::null()).status();
            }
            for chain in rules.lines().filter_map(|l| l.strip_prefix("-N ")) {
                if chain.starts_with("KUBE-") {
                    for op in ["-F", "-X"] {
                        let _ = Command::new(cmd)
                            .args(["-w", "-t", table, op, chain])
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
        }
    }
}

/// Whether the host's `/` is a shared mount (mountinfo's optional field
/// `shared:N`).
fn root_is_shared() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .is_some_and(|l| l.contains(" shared:"))
}

/// The cgroup v1 hierarchies mounted under /sys/fs/cgroup (or the unified
/// one).
fn cgroup_controllers() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir() && !e.path().is_symlink())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        v.push(String::new());
    }
    v
}

fn collect_procs(dir: &Path, pids: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&e.path(), pids);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
