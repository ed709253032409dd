//! Issue 19: adopting repositories that Velero, K8up, Stash v1 and
//! VolSync wrote. Each test builds a repository exactly as the tool lays it
//! out — real restic 0.19.1, run as the tool's pod runs it: in a private
//! mount namespace whose `/` is an overlay of the host's, with the volumes
//! mounted where the tool mounts them (`/host_pods/<pod-uid>/volumes/…`,
//! `/data/<pvc>`, `/source/data`, `/data`), the tool's hostnames, tags and
//! password — with several namespaces or volumes and several points in
//! time. `stash snapshots --adopt` must list every snapshot with its
//! identity, `stash restore --adopt` must restore a chosen volume at a
//! chosen time identically, and the repository must be byte-for-byte
//! unchanged afterwards. deploy/ADOPTING.md describes each layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use stash_testkit::servers;

use crate::support::{assert_trees_equal, checksums, CompareOptions, Restic, Stash};

/// One adopted repository under construction.
struct Repo {
    dir: tempfile::TempDir,
    repo: PathBuf,
    password_file: PathBuf,
}

impl Repo {
    /// A repository at `rel` (below a fresh temporary directory) with the
    /// password the tool uses.
    fn new(rel: &str, password: &str) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, password).unwrap();
        let repo = dir.path().join(rel);
        std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
        Repo {
            dir,
            repo,
            password_file,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn restic(&self) -> Restic {
        Restic::new(self.repo.display().to_string(), &self.password_file)
            .with_bin(servers::bin("restic"))
            .with_cache_dir(self.path("restic-cache"))
            .with_env("TZ", "UTC")
    }

    fn stash(&self) -> Stash {
        Stash {
            repo: self.repo.display().to_string(),
            password_file: self.password_file.clone(),
        }
    }

    /// Runs restic with `args` in `cwd` as a tool's pod would (see
    /// [`Restic::backup_in_mount_namespace`]); returns the snapshot id.
    fn backup_in_pod(&self, mounts: &[(&Path, &str)], cwd: &str, args: &[&str]) -> String {
        self.restic()
            .backup_in_mount_namespace(&self.path("pod-root"), mounts, cwd, args)
    }
}

/// Volume contents at one point in time: a few files, one of them
/// replaced in every generation.
fn fill(dir: &Path, label: &str, generation: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("generation.txt"),
        format!("{label}: generation {generation}\n"),
    )
    .unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(generation);
    for b in label.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let blob: Vec<u8> = (0..150_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("sub/blob.bin"), blob).unwrap();
    if generation > 1 {
        let _ = std::fs::remove_file(dir.join(format!("only-in-{}", generation - 1)));
    }
    std::fs::write(dir.join(format!("only-in-{generation}")), b"x").unwrap();
    std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

/// A copy of `src` as it is now (`cp -a`), to compare a restore with.
fn keep(src: &Path, copy: &Path) {
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(copy)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `stash snapshots --adopt TOOL --json`.
fn adopt_json(stash: &Stash, tool: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["snapshots", "--adopt", tool, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&stash.ok(&args)).unwrap()
}

/// The listing's snapshots as (id, identity), sorted by id.
fn listed(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut l: Vec<(String, serde_json::Value)> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["identity"].clone()))
        .collect();
    l.sort_by(|a, b| a.0.cmp(&b.0));
    l
}

fn sorted(mut v: Vec<(String, serde_json::Value)>) -> Vec<(String, serde_json::Value)> {
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `stash restore --adopt …` into a fresh target; returns the target and
/// stdout.
fn restore(r: &Repo, name: &str, args: &[&str]) -> (PathBuf, String) {
    let target = r.path(&format!("restored-{name}"));
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    let t = target.display().to_string();
    a.extend_from_slice(&["--target", &t]);
    let out = r.stash().ok(&a);
    (target, out)
}

const TIMES: [&str; 3] = [
    "2026-01-05 02:00:00",
    "2026-02-05 02:00:00",
    "2026-03-05 02:00:00",
];

/// Velero keeps one repository per namespace at
/// `<bucket>/<prefix>/restic/<namespace>`, encrypted with its static
/// default password, and runs `restic backup --tag=… --host=velero .` in
/// the volume's directory under `/host_pods/<pod-uid>/volumes/`.
#[test]
fn velero_repositories_are_listed_and_restored_by_identity() {
    struct Vol {
        ns: &'static str,
        pod: &'static str,
        pod_uid: &'static str,
        volume: &'static str,
        dir: &'static str,
        pvc_uid: Option<&'static str>,
    }
    let vols = [
        Vol {
            ns: "shop",
            pod: "db-0",
            pod_uid: "2f0d5a7e-1c9b-4a51-9d0e-7a1b2c3d4e01",
            volume: "data",
            dir: "kubernetes.io~csi/pvc-8d1c/mount",
            pvc_uid: Some("8d1c0b6e-77aa-4f1e-b2c3-000000000001"),
        },
        Vol {
            ns: "shop",
            pod: "web-7d9f8-x2k4p",
            pod_uid: "2f0d5a7e-1c9b-4a51-9d0e-7a1b2c3d4e02",
            volume: "cache",
            dir: "kubernetes.io~empty-dir/cache",
            pvc_uid: None,
        },
        Vol {
            ns: "bank",
            pod: "vault-0",
            pod_uid: "2f0d5a7e-1c9b-4a51-9d0e-7a1b2c3d4e03",
            volume: "secrets",
            dir: "kubernetes.io~csi/pvc-5e2a/mount",
            pvc_uid: Some("5e2a9f00-1111-4f1e-b2c3-000000000002"),
        },
    ];
    // One repository per namespace, both below the storage location's
    // prefix, as Velero's BackupRepositories are.
    let shop = Repo::new("bucket/velero/restic/shop", "static-passw0rd");
    let bank = Repo::new("bucket/velero/restic/bank", "static-passw0rd");
    let repo_of = |ns: &str| if ns == "shop" { &shop } else { &bank };
    for r in [&shop, &bank] {
        r.restic().init(2);
    }
    let mut expect: Vec<Vec<(String, serde_json::Value)>> = vec![Vec::new(), Vec::new()];
    for (g, time) in TIMES.iter().enumerate() {
        let generation = g as u32 + 1;
        let backup = format!("daily-{generation}");
        for v in &vols {
            let r = repo_of(v.ns);
            let src = r.path(&format!("volumes/{}", v.volume));
            fill(&src, v.volume, generation);
            keep(
                &src,
                &r.path(&format!("expected/{}/{generation}", v.volume)),
            );
            let at = format!("/host_pods/{}/volumes/{}", v.pod_uid, v.dir);
            let mut tags = vec![
                format!("--tag=backup={backup}"),
                format!("--tag=backup-uid=0000-{generation}"),
                format!("--tag=pod={}", v.pod),
                format!("--tag=pod-uid={}", v.pod_uid),
                format!("--tag=ns={}", v.ns),
                format!("--tag=volume={}", v.volume),
            ];
            if let Some(u) = v.pvc_uid {
                tags.push(format!("--tag=pvc-uid={u}"));
            }
            let mut args: Vec<&str> = tags.iter().map(String::as_str).collect();
            args.extend_from_slice(&["--host=velero", "--time", time, "."]);
            let id = r.backup_in_pod(&[(&src, &at)], &at, &args);
            let mut identity = serde_json::json!({
                "namespace": v.ns, "pod": v.pod, "volume": v.volume, "backup": backup,
            });
            if let Some(u) = v.pvc_uid {
                identity["pvcUid"] = u.into();
            }
            expect[usize::from(v.ns == "bank")].push((id, identity));
        }
    }
    let before = [checksums(&shop.repo), checksums(&bank.repo)];

    for (r, e) in [&shop, &bank].into_iter().zip(&expect) {
        let v = adopt_json(&r.stash(), "velero", &[]);
        assert_eq!(v["fits"], true, "{v}");
        assert_eq!(v["misfits"], serde_json::json!([]));
        let got = listed(&v);
        assert_eq!(got.len(), e.len());
        for ((gid, gidentity), (eid, eidentity)) in got.iter().zip(sorted(e.clone())) {
            assert!(
                gid.starts_with(&eid) || eid.starts_with(gid.as_str()),
                "{gid} vs {eid}"
            );
            assert_eq!(gidentity, &eidentity);
        }
        let table = r.stash().ok(&["snapshots", "--adopt", "velero"]);
        let summary = format!("{} snapshots fit Velero's layout, 0 do not", e.len());
        assert!(table.contains(&summary), "{table}");
    }

    // The PVC-backed volume at the second point in time, chosen by
    // namespace and volume (the pod's name could change; the PVC's UID
    // does not): restored without a lock.
    let (target, out) = restore(
        &shop,
        "data-2",
        &[
            "--no-lock",
            "--adopt",
            "velero",
            "--namespace",
            "shop",
            "--volume",
            "data",
            "--at",
            "2026-02-20T00:00:00Z",
        ],
    );
    assert!(
        out.contains("namespace shop, pod/db-0 volume/data"),
        "{out}"
    );
    assert_trees_equal(
        &shop.path("expected/data/2"),
        &target,
        &CompareOptions::default(),
    );
    // The emptyDir volume, latest, by pod and volume, with the shared lock.
    let (target, _) = restore(
        &shop,
        "cache-3",
        &[
            "--adopt",
            "velero",
            "--pod",
            "web-7d9f8-x2k4p",
            "--volume",
            "cache",
        ],
    );
    assert_trees_equal(
        &shop.path("expected/cache/3"),
        &target,
        &CompareOptions::default(),
    );
    let (target, _) = restore(
        &bank,
        "secrets-1",
        &[
            "--adopt",
            "velero",
            "--namespace",
            "bank",
            "--at",
            "2026-01-31T00:00:00Z",
        ],
    );
    assert_trees_equal(
        &bank.path("expected/secrets/1"),
        &target,
        &CompareOptions::default(),
    );

    // Ambiguous, unmatched, too early, and a name Velero never records.
    let s = shop.stash();
    let (_, err) = s.fails(&[
        "restore",
        "--adopt",
        "velero",
        "--namespace",
        "shop",
        "--target",
        "/nonexistent",
    ]);
    assert!(err.contains("matches snapshots of 2 sources"), "{err}");
    assert!(
        err.contains("volume/cache") && err.contains("volume/data"),
        "{err}"
    );
    let (_, err) = s.fails(&[
        "restore",
        "--adopt",
        "velero",
        "--volume",
        "logs",
        "--target",
        "/nonexistent",
    ]);
    assert!(err.contains("no adopted snapshot matches"), "{err}");
    assert!(err.contains("pod/db-0 volume/data"), "{err}");
    let (_, err) = s.fails(&[
        "restore",
        "--adopt",
        "velero",
        "--volume",
        "data",
        "--at",
        "2025-12-01T00:00:00Z",
        "--target",
        "/nonexistent",
    ]);
    assert!(err.contains("no snapshot at or before 2025-12-01"), "{err}");
    let (_, err) = s.fails(&[
        "restore",
        "--adopt",
        "velero",
        "--pvc",
        "db-data",
        "--target",
        "/nonexistent",
    ]);
    assert!(
        err.contains("--pvc cannot select Velero snapshots"),
        "{err}"
    );
    assert!(err.contains("pvc-uid"), "{err}");
    assert!(!Path::new("/nonexistent").exists());

    assert_eq!(
        checksums(&shop.repo),
        before[0],
        "the shop repository changed"
    );
    assert_eq!(
        checksums(&bank.repo),
        before[1],
        "the bank repository changed"
    );
}

/// K8up runs `restic backup --host <namespace> /data/<pvc>` for every
/// PVC it mounts below /data, with the Backup's tags; a backup command's
/// output goes in as `/<namespace>-<container><ext>`.
#[test]
fn k8up_repositories_are_listed_and_restored_by_identity() {
    let r = Repo::new("bucket/k8up", "k8up-repo-password");
    r.restic().init(2);
    let pvcs = [("shop", "db-data"), ("shop", "uploads"), ("bank", "ledger")];
    let mut expect = Vec::new();
    for (g, time) in TIMES.iter().enumerate() {
        let generation = g as u32 + 1;
        for (ns, pvc) in pvcs {
            let src = r.path(&format!("volumes/{ns}/{pvc}"));
            fill(&src, pvc, generation);
            keep(&src, &r.path(&format!("expected/{ns}/{pvc}/{generation}")));
            let at = format!("/data/{pvc}");
            let id = r.backup_in_pod(
                &[(&src, &at)],
                "/",
                &["--host", ns, "--tag", "daily", "--time", time, &at],
            );
            expect.push((id, serde_json::json!({"namespace": ns, "pvc": pvc})));
        }
    }
    // A backup command's output (k8up.io/backupcommand).
    let dump = r.path("dump.sql");
    std::fs::write(&dump, b"-- mysqldump\n").unwrap();
    let mut c = r.restic().command();
    c.args([
        "backup",
        "--json",
        "--host",
        "shop",
        "--stdin",
        "--stdin-filename",
        "/shop-mysql.sql",
        "--time",
        TIMES[2],
    ])
    .stdin(std::fs::File::open(&dump).unwrap());
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = checksums(&r.repo);

    let v = adopt_json(&r.stash(), "k8up", &[]);
    assert_eq!(v["fits"], true, "{v}");
    let got = listed(&v);
    assert_eq!(got.len(), expect.len() + 1, "{v}");
    let streams: Vec<_> = got
        .iter()
        .filter(|(_, i)| i.get("stream").is_some())
        .collect();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        streams[0].1,
        serde_json::json!({"namespace": "shop", "stream": "shop-mysql.sql"})
    );
    let volumes: Vec<_> = got
        .into_iter()
        .filter(|(_, i)| i.get("stream").is_none())
        .collect();
    for ((gid, gi), (eid, ei)) in volumes.iter().zip(sorted(expect)) {
        assert!(
            gid.starts_with(&eid) || eid.starts_with(gid.as_str()),
            "{gid} vs {eid}"
        );
        assert_eq!(gi, &ei);
    }

    for (ns, pvc, at, generation) in [
        ("shop", "db-data", "2026-02-05T02:00:00Z", 2),
        ("shop", "uploads", "latest", 3),
        ("bank", "ledger", "2026-01-06T00:00:00Z", 1),
    ] {
        let (target, out) = restore(
            &r,
            &format!("{ns}-{pvc}"),
            &[
                "--adopt",
                "k8up",
                "--namespace",
                ns,
                "--pvc",
                pvc,
                "--at",
                at,
            ],
        );
        assert!(
            out.contains(&format!("namespace {ns}, pvc/{pvc} (K8up)")),
            "{out}"
        );
        assert_trees_equal(
            &r.path(&format!("expected/{ns}/{pvc}/{generation}")),
            &target,
            &CompareOptions::default(),
        );
    }
    let (_, err) = r.stash().fails(&[
        "restore",
        "--adopt",
        "k8up",
        "--pvc",
        "ledger",
        "--namespace",
        "shop",
        "--target",
        "/nonexistent",
    ]);
    assert!(err.contains("no adopted snapshot matches"), "{err}");
    assert!(err.contains("namespace bank, pvc/ledger"), "{err}");
    assert_eq!(checksums(&r.repo), before, "the repository changed");
}

/// Stash v1 runs `restic backup <path> --host <host>` per target path in
/// the workload's sidecar: host-<ordinal> for a StatefulSet's pods, no
/// tags; one repository per target.
#[test]
fn stash_v1_repositories_are_listed_and_restored_by_identity() {
    let r = Repo::new("bucket/stash/shop/statefulset/db", "stash-v1-password");
    r.restic().init(2);
    let targets = [
        ("host-0", "/source/data"),
        ("host-1", "/source/data"),
        ("host-0", "/source/config"),
    ];
    let mut expect = Vec::new();
    for (g, time) in TIMES.iter().enumerate() {
        let generation = g as u32 + 1;
        for (host, path) in targets {
            let label = format!("{host}{}", path.replace('/', "-"));
            let src = r.path(&format!("volumes/{label}"));
            fill(&src, &label, generation);
            keep(&src, &r.path(&format!("expected/{label}/{generation}")));
            let id = r.backup_in_pod(
                &[(&src, path)],
                "/",
                &[path, "--host", host, "--time", time],
            );
            expect.push((id, serde_json::json!({"replica": host, "path": path})));
        }
    }
    let before = checksums(&r.repo);
    let v = adopt_json(&r.stash(), "stash", &[]);
    assert_eq!(v["fits"], true, "{v}");
    let got = listed(&v);
    assert_eq!(got.len(), expect.len());
    for ((gid, gi), (eid, ei)) in got.iter().zip(sorted(expect)) {
        assert!(
            gid.starts_with(&eid) || eid.starts_with(gid.as_str()),
            "{gid} vs {eid}"
        );
        assert_eq!(gi, &ei);
    }
    let table = r.stash().ok(&["snapshots", "--adopt", "stash"]);
    assert!(table.contains("one repository per target"), "{table}");

    let (target, out) = restore(
        &r,
        "host-1",
        &[
            "--adopt",
            "stash",
            "--replica",
            "host-1",
            "--at",
            "2026-02-10T00:00:00Z",
        ],
    );
    assert!(out.contains("replica/host-1 path//source/data"), "{out}");
    assert_trees_equal(
        &r.path("expected/host-1-source-data/2"),
        &target,
        &CompareOptions::default(),
    );
    let (target, _) = restore(
        &r,
        "host-0-config",
        &[
            "--no-lock",
            "--adopt",
            "stash",
            "--replica",
            "host-0",
            "--path",
            "/source/config",
        ],
    );
    assert_trees_equal(
        &r.path("expected/host-0-source-config/3"),
        &target,
        &CompareOptions::default(),
    );
    let (_, err) = r.stash().fails(&[
        "restore",
        "--adopt",
        "stash",
        "--replica",
        "host-0",
        "--target",
        "/nonexistent",
    ]);
    assert!(err.contains("matches snapshots of 2 sources"), "{err}");
    let (_, err) = r.stash().fails(&[
        "restore",
        "--adopt",
        "stash",
        "--namespace",
        "shop",
        "--target",
        "/nonexistent",
    ]);
    assert!(err.contains("one repository per target"), "{err}");
    assert_eq!(checksums(&r.repo), before, "the repository changed");
}

/// VolSync's restic mover runs `restic backup --host volsync
/// --exclude=lost+found .` in /data, one repository per ReplicationSource.
#[test]
fn volsync_repositories_are_listed_and_restored_by_time() {
    let r = Repo::new("bucket/volsync/db-data", "volsync-password");
    r.restic().init(2);
    let src = r.path("volumes/db-data");
    let mut expect = Vec::new();
    for (g, time) in TIMES.iter().enumerate() {
        let generation = g as u32 + 1;
        fill(&src, "db-data", generation);
        keep(&src, &r.path(&format!("expected/{generation}")));
        // lost+found is the file system's, not the data.
        std::fs::create_dir_all(src.join("lost+found")).unwrap();
        let id = r.backup_in_pod(
            &[(&src, "/data")],
            "/data",
            &[
                "--host",
                "volsync",
                "--exclude=lost+found",
                "--time",
                time,
                ".",
            ],
        );
        std::fs::remove_dir(src.join("lost+found")).unwrap();
        expect.push((id, serde_json::json!({})));
    }
    let before = checksums(&r.repo);
    let v = adopt_json(&r.stash(), "volsync", &[]);
    assert_eq!(v["fits"], true, "{v}");
    let got = listed(&v);
    assert_eq!(got.len(), 3);
    for ((gid, gi), (eid, ei)) in got.iter().zip(sorted(expect)) {
        assert!(
            gid.starts_with(&eid) || eid.starts_with(gid.as_str()),
            "{gid} vs {eid}"
        );
        assert_eq!(gi, &ei);
    }
    for (at, generation) in [
        ("2026-01-31T00:00:00Z", 1),
        ("2026-03-05T02:00:00Z", 3),
        ("2026-03-05T01:59:59Z", 2),
    ] {
        let (target, _) = restore(
            &r,
            &format!("{generation}"),
            &["--adopt", "volsync", "--at", at],
        );
        assert_trees_equal(
            &r.path(&format!("expected/{generation}")),
            &target,
            &CompareOptions::default(),
        );
    }
    let (_, err) = r.stash().fails(&[
        "restore",
        "--adopt",
        "volsync",
        "--pvc",
        "db-data",
        "--target",
        "/nonexistent",
    ]);
    assert!(
        err.contains("one repository per ReplicationSource"),
        "{err}"
    );
    assert!(err.contains("time alone"), "{err}");
    assert_eq!(checksums(&r.repo), before, "the repository changed");
}

/// A repository of one tool read as another's is reported with what its
/// snapshots carry, and nothing is restored from it.
#[test]
fn a_repository_of_another_tools_layout_is_reported_not_guessed() {
    // K8up's layout...
    let k8up = Repo::new("k8up", "pw");
    k8up.restic().init(2);
    let src = k8up.path("volumes/db-data");
    fill(&src, "db-data", 1);
    k8up.backup_in_pod(
        &[(&src, "/data/db-data")],
        "/",
        &["--host", "shop", "/data/db-data"],
    );
    // ... and VolSync's.
    let volsync = Repo::new("volsync", "pw");
    volsync.restic().init(2);
    volsync.backup_in_pod(&[(&src, "/data")], "/data", &["--host", "volsync", "."]);

    for (r, wrong, found) in [
        (
            &k8up,
            "velero",
            "host \"shop\", paths [/data/db-data], tags []",
        ),
        (&k8up, "volsync", "host \"shop\", paths [/data/db-data]"),
        (&volsync, "k8up", "host \"volsync\", paths [/data]"),
        (&volsync, "stash", "host \"volsync\", paths [/data]"),
    ] {
        let before = checksums(&r.repo);
        let out = r.stash().run(&["snapshots", "--adopt", wrong]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("does not look like"), "{wrong}: {err}");
        assert!(err.contains(found), "{wrong}: {err}");
        let json = r.stash().run(&["snapshots", "--adopt", wrong, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["fits"], false);
        assert_eq!(v["snapshots"], serde_json::json!([]));
        assert_eq!(v["misfits"].as_array().unwrap().len(), 1);
        assert!(!v["misfits"][0]["reason"].as_str().unwrap().is_empty());
        let target = r.path(&format!("restored-as-{wrong}"));
        let (_, err) = r.stash().fails(&[
            "restore",
            "--adopt",
            wrong,
            "--target",
            target.to_str().unwrap(),
        ]);
        assert!(err.contains("does not look like"), "{err}");
        assert!(!target.exists(), "nothing may be restored");
        assert_eq!(checksums(&r.repo), before);
    }
    // The right mode finds them.
    let v = adopt_json(&k8up.stash(), "k8up", &[]);
    assert_eq!(v["snapshots"][0]["identity"]["pvc"], "db-data");
}
