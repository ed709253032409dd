//! Integration tests of the engine on a real local repository: restore
//! safety against hostile snapshots, and damage handling.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use repo_format::format::repofile::tree::gomode;
use repo_format::ops::backup::{backup, BackupOptions};
use repo_format::ops::check::{check, CheckOptions};
use repo_format::ops::restore::{restore, RestoreOptions};
use repo_format::repository::lock::{LockTiming, RepoLock};
use repo_format::{
    Backend, BlobType, FileType, Id, KdfParams, LocalBackend, Node, NodeType, Repository, Tree,
};

fn new_repo(dir: &Path) -> Repository {
    let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("repo")));
    Repository::init(b, b"pw", 2, KdfParams::INSECURE_FOR_TESTS).unwrap()
}

fn file_node(name: &[u8], repo: &Repository, content: &[u8]) -> Node {
    let (id, _) = repo.save_blob(BlobType::Data, content).unwrap();
    let mut n = Node::new(name.to_vec(), NodeType::File);
    n.mode = 0o644;
    n.size = content.len() as u64;
    n.content = Some(vec![id]);
    n
}

fn save_tree_unsorted(repo: &Repository, nodes: Vec<Node>) -> Id {
    // Hostile trees need not be sorted; write the JSON as an attacker would.
    let t = Tree { nodes };
    repo.save_blob(BlobType::Tree, &t.to_json()).unwrap().0
}

fn dir_node(name: &[u8], subtree: Id) -> Node {
    let mut n = Node::new(name.to_vec(), NodeType::Dir);
    n.mode = gomode::DIR | 0o755;
    n.subtree = Some(subtree);
    n
}

/// Lists every path below `root` (relative), following nothing.
fn all_paths(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir(root);
    v.sort();
    v
}

fn walkdir(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn hostile_names_never_escape_the_target() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let inner = save_tree_unsorted(&repo, vec![file_node(b"evil", &repo, b"pwned")]);
    let root = save_tree_unsorted(
        &repo,
        vec![
            file_node(b"..", &repo, b"dotdot"),
            file_node(b".", &repo, b"dot"),
            file_node(b"", &repo, b"empty"),
            file_node(b"../escaped", &repo, b"x"),
            file_node(b"/etc/passwd-stash-test", &repo, b"x"),
            file_node(b"sub/../../escaped2", &repo, b"x"),
            dir_node(b"../..", inner),
            dir_node(b"a/../..", inner),
            file_node(b"good", &repo, b"fine"),
        ],
    );
    repo.flush().unwrap();
    let target = t.path().join("target");
    let res = restore(
        &repo,
        &root,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    // Every hostile node is refused and reported; the good one is restored.
    assert_eq!(res.errors.len(), 8, "{:#?}", res.errors);
    assert!(res
        .errors
        .iter()
        .all(|e| e.message.contains("refusing unsafe name")));
    assert_eq!(fs::read(target.join("good")).unwrap(), b"fine");
    assert_eq!(all_paths(&target), vec!["good"]);
    // Nothing appeared next to the target, nor in /etc.
    let mut outside = all_paths(t.path());
    outside.retain(|p| !p.starts_with("repo") && !p.starts_with("target"));
    assert_eq!(outside, vec![] as Vec<String>);
    assert!(!Path::new("/etc/passwd-stash-test").exists());
}

#[test]
fn a_symlink_in_the_way_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // Snapshot 1: "s" is a symlink to a directory outside the target,
    // "f" a symlink to a file outside.
    let mut s = Node::new(b"s".to_vec(), NodeType::Symlink);
    s.link_target = outside.as_os_str().as_encoded_bytes().to_vec();
    let mut f = Node::new(b"f".to_vec(), NodeType::Symlink);
    f.link_target = outside.join("file").as_os_str().as_encoded_bytes().to_vec();
    let root1 = save_tree_unsorted(&repo, vec![f, s]);
    // Snapshot 2: "s" is a directory with a file, "f" a regular file.
    let inner = save_tree_unsorted(&repo, vec![file_node(b"evil", &repo, b"pwned")]);
    let root2 = save_tree_unsorted(
        &repo,
        vec![file_node(b"f", &repo, b"data"), dir_node(b"s", inner)],
    );
    repo.flush().unwrap();
    let target = t.path().join("target");
    let opts = RestoreOptions {
        target: target.clone(),
        ..Default::default()
    };
    let r1 = restore(&repo, &root1, &opts).unwrap();
    assert!(r1.errors.is_empty(), "{:?}", r1.errors);
    assert!(fs::symlink_metadata(target.join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    let r2 = restore(&repo, &root2, &opts).unwrap();
    assert!(r2.errors.is_empty(), "{:?}", r2.errors);
    assert!(fs::symlink_metadata(target.join("s")).unwrap().is_dir());
    assert_eq!(fs::read(target.join("s/evil")).unwrap(), b"pwned");
    assert_eq!(fs::read(target.join("f")).unwrap(), b"data");
    assert_eq!(
        all_paths(&outside),
        vec![] as Vec<String>,
        "wrote through a symlink"
    );
}

#[test]
fn damaged_blob_costs_only_its_file_and_check_names_it() {
    let t = tempfile::tempdir().unwrap();
    let mut repo = new_repo(t.path());
    repo.set_write_options(repo_format::WriteOptions {
        pack_size: 1,
        ..Default::default()
    });
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..5 {
        fs::write(
            src.join(format!("f{i}")),
            format!("content of file {i}").repeat(100 + i),
        )
        .unwrap();
    }
    let res = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(res.errors.is_empty());
    // Find the blob of f2 and flip one byte of it in its pack.
    let id = blob_of(&repo, &res.snapshot.tree, &src, "f2");
    let loc = repo.blob_location(BlobType::Data, &id).unwrap();
    let pack_path = t
        .path()
        .join("repo/data")
        .join(&loc.pack.to_hex()[..2])
        .join(loc.pack.to_hex());
    let mut bytes = fs::read(&pack_path).unwrap();
    bytes[loc.offset as usize + 20] ^= 0x01;
    fs::remove_file(&pack_path).unwrap();
    fs::write(&pack_path, &bytes).unwrap();

    let rep = check(
        &repo,
        CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        },
    )
    .unwrap();
    assert!(!rep.is_ok());
    let joined = rep.errors.join("\n");
    assert!(joined.contains(&loc.pack.to_hex()), "{joined}");
    assert!(joined.contains(&id.to_hex()), "{joined}");
    // Without reading data the structure is still fine.
    assert!(check(&repo, CheckOptions::default()).unwrap().is_ok());

    let target = t.path().join("target");
    let r = restore(
        &repo,
        &res.snapshot.tree,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].path.ends_with("/f2"));
    assert!(r.errors[0].message.contains(&id.to_hex()));
    let restored = target.join(src.strip_prefix("/").unwrap());
    for i in [0, 1, 3, 4] {
        assert_eq!(
            fs::read(restored.join(format!("f{i}"))).unwrap(),
            fs::read(src.join(format!("f{i}"))).unwrap()
        );
    }
    assert!(!restored.join("f2").exists());
}

/// The tree id of the directory `src` (absolute) in a snapshot's root tree.
fn subtree_of(repo: &Repository, root: &Id, src: &Path) -> Id {
    let mut tree = *root;
    for comp in src.iter().skip(1) {
        let t = repo.load_tree(&tree).unwrap();
        tree = t
            .nodes
            .iter()
            .find(|n| n.name == comp.as_encoded_bytes())
            .unwrap()
            .subtree
            .unwrap();
    }
    tree
}

fn blob_of(repo: &Repository, root: &Id, src: &Path, name: &str) -> Id {
    let tree = subtree_of(repo, root, src);
    let t = repo.load_tree(&tree).unwrap();
    t.nodes
        .iter()
        .find(|n| n.name == name.as_bytes())
        .unwrap()
        .content
        .as_ref()
        .unwrap()[0]
}

#[test]
fn incremental_backup_reuses_unchanged_files_and_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"aaaa").unwrap();
    fs::write(src.join("d/b"), b"bbbb").unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..Default::default()
    };
    let first = backup(&repo, &opts).unwrap();
    let s1 = first.snapshot.summary.clone().unwrap();
    assert_eq!((s1.files_new, s1.files_unmodified), (2, 0));
    let second = backup(&repo, &opts).unwrap();
    assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
    // Compare the source's own tree: /tmp above it changes whenever any
    // other test makes a temporary directory.
    let src_tree = |root: &Id| subtree_of(&repo, root, &src);
    assert_eq!(
        src_tree(&second.snapshot.tree),
        src_tree(&first.snapshot.tree)
    );
    let s2 = second.snapshot.summary.clone().unwrap();
    assert_eq!(
        (s2.files_new, s2.files_changed, s2.files_unmodified),
        (0, 0, 2)
    );
    assert_eq!(s2.data_blobs, 0);
    fs::write(src.join("d/b"), b"changed!").unwrap();
    let third = backup(&repo, &opts).unwrap();
    let s3 = third.snapshot.summary.clone().unwrap();
    assert_eq!((s3.files_changed, s3.files_unmodified), (1, 1));
    assert_ne!(
        src_tree(&third.snapshot.tree),
        src_tree(&first.snapshot.tree)
    );
    // --force re-reads but stores nothing new.
    let forced = backup(
        &repo,
        &BackupOptions {
            force: true,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(
        src_tree(&forced.snapshot.tree),
        src_tree(&third.snapshot.tree)
    );
    assert_eq!(forced.snapshot.parent, None);
}

#[test]
fn excludes_skip_matching_paths() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep.txt"), b"k").unwrap();
    fs::write(src.join("skip.log"), b"s").unwrap();
    fs::write(src.join("cache/x"), b"x").unwrap();
    let res = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            excludes: vec!["*.log".into(), "cache".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let target = t.path().join("target");
    restore(
        &repo,
        &res.snapshot.tree,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(all_paths(&restored), vec!["keep.txt"]);
}

#[test]
fn restore_includes_select_paths_and_their_parents() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::create_dir_all(src.join("c")).unwrap();
    fs::write(src.join("a/b/x"), b"x").unwrap();
    fs::write(src.join("a/y"), b"y").unwrap();
    fs::write(src.join("c/z"), b"z").unwrap();
    let res = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    let target = t.path().join("target");
    let include = format!("{}/a/b", src.display());
    let r = restore(
        &repo,
        &res.snapshot.tree,
        &RestoreOptions {
            target: target.clone(),
            includes: vec![include],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.errors.is_empty());
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(all_paths(&restored), vec!["a", "a/b", "a/b/x"]);
}

#[test]
fn a_directory_recorded_under_another_name_keeps_its_parent_when_it_moves() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    // The kubelet keeps a volume under the pod's UID; a new pod has a new UID.
    let first_dir = t.path().join("pods/uid-1/volumes/data");
    let second_dir = t.path().join("pods/uid-2/volumes/data");
    for d in [&first_dir, &second_dir] {
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/f"), vec![7u8; 100_000]).unwrap();
    }
    let opts = |dir: &Path| BackupOptions {
        paths: vec![dir.to_path_buf()],
        as_path: Some("/data".into()),
        host: Some("shop/db-data".into()),
        ..Default::default()
    };
    let first = backup(&repo, &opts(&first_dir)).unwrap();
    assert_eq!(first.snapshot.paths, ["/data"]);
    let root = repo.load_tree(&first.snapshot.tree).unwrap();
    let names: Vec<&[u8]> = root.nodes.iter().map(|n| n.name.as_slice()).collect();
    assert_eq!(names, [b"data".as_slice()]);
    let second = backup(&repo, &opts(&second_dir)).unwrap();
    assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
    assert_eq!(second.snapshot.summary.unwrap().data_blobs, 0);
    let target = t.path().join("target");
    restore(
        &repo,
        &second.snapshot.tree,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        fs::read(target.join("data/sub/f")).unwrap(),
        vec![7u8; 100_000]
    );
    // Only one name below the root, and only for one path.
    for bad in ["data", "/", "/a/b", "/..", ""] {
        let err = backup(
            &repo,
            &BackupOptions {
                as_path: Some(bad.into()),
                ..opts(&first_dir)
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("one name below the root"), "{err}");
    }
    let err = backup(
        &repo,
        &BackupOptions {
            paths: vec![first_dir.clone(), second_dir.clone()],
            ..opts(&first_dir)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("exactly one path"), "{err}");
}

#[test]
fn a_cancelled_backup_writes_no_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let progress = repo_format::ops::progress::Progress::default();
    progress.cancel();
    let err = repo_format::ops::backup::backup_with_progress(
        &repo,
        &BackupOptions {
            paths: vec![src],
            ..Default::default()
        },
        &progress,
    )
    .unwrap_err();
    assert!(matches!(err, repo_format::Error::Cancelled), "{err}");
    assert!(repo.snapshots().unwrap().is_empty());
}

/// A local backend that can refuse lock writes (as an object store whose
/// policy changed, or a server answering 403 to `locks/`), and that takes
/// `pack_delay` for every pack upload, so a backup is still writing when
/// its lock refresh fails.
#[derive(Debug)]
struct LockRefusing {
    inner: LocalBackend,
    refuse_locks: std::sync::atomic::AtomicBool,
    pack_delay: std::time::Duration,
}

impl Backend for LockRefusing {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> repo_format::Result<()> {
        self.inner.create()
    }
    fn list(&self, tpe: FileType) -> repo_format::Result<Vec<repo_format::backend::FileInfo>> {
        self.inner.list(tpe)
    }
    fn read(&self, tpe: FileType, name: &str) -> repo_format::Result<Vec<u8>> {
        self.inner.read(tpe, name)
    }
    fn read_range(
        &self,
        tpe: FileType,
        name: &str,
        offset: u64,
        length: u32,
    ) -> repo_format::Result<Vec<u8>> {
        self.inner.read_range(tpe, name, offset, length)
    }
    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> repo_format::Result<()> {
        use std::sync::atomic::Ordering;
        if tpe == FileType::Lock && self.refuse_locks.load(Ordering::SeqCst) {
            return Err(repo_format::Error::Backend {
                op: "write",
                location: format!("locks/{name}"),
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "403 Forbidden"),
            });
        }
        if tpe == FileType::Pack {
            std::thread::sleep(self.pack_delay);
        }
        self.inner.write(tpe, name, data)
    }
    fn remove(&self, tpe: FileType, name: &str) -> repo_format::Result<()> {
        self.inner.remove(tpe, name)
    }
    fn exists(&self, tpe: FileType, name: &str) -> repo_format::Result<bool> {
        self.inner.exists(tpe, name)
    }
}

fn lock_refusing_repo(dir: &Path) -> (Arc<LockRefusing>, Arc<Repository>) {
    let b = Arc::new(LockRefusing {
        inner: LocalBackend::new(dir.join("repo")),
        refuse_locks: Default::default(),
        pack_delay: std::time::Duration::from_millis(700),
    });
    let dynb: Arc<dyn Backend> = b.clone();
    let repo = Repository::init(dynb, b"pw", 2, KdfParams::INSECURE_FOR_TESTS).unwrap();
    (b, Arc::new(repo))
}

const FAST_LOCKS: LockTiming = LockTiming {
    refresh_every: std::time::Duration::from_millis(50),
    give_up_after: std::time::Duration::from_millis(250),
};

/// Backs up `src` under a lock on FAST_LOCKS timing whose loss cancels the
/// backup; `refuse` makes the backend refuse lock writes once the lock is
/// taken.
fn backup_under_lock(
    b: &LockRefusing,
    repo: &Arc<Repository>,
    src: &Path,
    refuse: bool,
) -> (repo_format::Result<Id>, bool) {
    let progress = Arc::new(repo_format::ops::progress::Progress::default());
    let p = progress.clone();
    let lock = RepoLock::acquire_with(
        repo.clone(),
        false,
        FAST_LOCKS,
        Some(Box::new(move || p.cancel())),
    )
    .unwrap();
    b.refuse_locks
        .store(refuse, std::sync::atomic::Ordering::SeqCst);
    let r = repo_format::ops::backup::backup_with_progress(
        repo,
        &BackupOptions {
            paths: vec![src.to_path_buf()],
            ..Default::default()
        },
        &progress,
    )
    .map(|r| r.snapshot_id);
    let lost = lock.is_lost();
    b.refuse_locks
        .store(false, std::sync::atomic::Ordering::SeqCst);
    drop(lock);
    (r, lost)
}

#[test]
fn a_lock_that_cannot_be_refreshed_stops_the_backup_before_its_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (b, repo) = lock_refusing_repo(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..20u32 {
        let body: Vec<u8> = (0..64 * 1024u32)
            .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
            .collect();
        fs::write(src.join(format!("f{i}")), body).unwrap();
    }
    // The lock is refused while the (slow) pack upload runs: the backup
    // must end before its snapshot, well before the lock's stale age.
    let (r, lost) = backup_under_lock(&b, &repo, &src, true);
    assert!(lost, "the refresher never gave the lock up");
    let err = r.unwrap_err();
    assert!(matches!(err, repo_format::Error::Cancelled), "{err}");
    assert!(
        repo.snapshots().unwrap().is_empty(),
        "a snapshot was written under a lost lock"
    );
    // The same backup with a working backend succeeds (the slow uploads
    // alone do not stop it), and the lock file is gone afterwards.
    let (r, lost) = backup_under_lock(&b, &repo, &src, false);
    assert!(!lost);
    r.unwrap();
    assert_eq!(repo.snapshots().unwrap().len(), 1);
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

#[test]
fn a_lock_refresh_that_fails_briefly_is_retried_not_given_up() {
    use std::sync::atomic::Ordering;
    let t = tempfile::tempdir().unwrap();
    let (b, repo) = lock_refusing_repo(t.path());
    let lock = RepoLock::acquire_with(repo.clone(), false, FAST_LOCKS, None).unwrap();
    let first = lock.name();
    // Refused for less than the give-up age: retried with backoff.
    b.refuse_locks.store(true, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(120));
    b.refuse_locks.store(false, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!lock.is_lost());
    lock.check().unwrap();
    assert_ne!(
        lock.name(),
        first,
        "the lock was not refreshed after the outage"
    );
    assert_eq!(repo.list_ids(FileType::Lock).unwrap().len(), 1);
    // Refused for longer: given up, and `check` says so.
    b.refuse_locks.store(true, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(lock.is_lost());
    assert!(matches!(lock.check(), Err(repo_format::Error::LockLost)));
    b.refuse_locks.store(false, Ordering::SeqCst);
}

/// The body of [`a_mostly_unreadable_source_yields_no_snapshot`], run where
/// mode-000 files really are unreadable (without CAP_DAC_OVERRIDE).
fn unreadable_source_body() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("readable"), b"ok").unwrap();
    for i in 0..9 {
        let f = src.join(format!("secret{i}"));
        fs::write(&f, b"unreadable").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
    }
    assert!(
        fs::read(src.join("secret0")).is_err(),
        "test needs unreadable files"
    );
    let opts = |max: Option<f64>| BackupOptions {
        paths: vec![src.clone()],
        max_unreadable: max,
        ..Default::default()
    };
    // 9 of 11 entries (root, 10 files) unreadable: refused, no snapshot.
    let err = backup(&repo, &opts(Some(0.5))).unwrap_err();
    assert!(
        matches!(err, repo_format::Error::Unreadable { unreadable: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("secret"), "{err}");
    assert!(repo.snapshots().unwrap().is_empty());
    // restic's way (no limit): the snapshot is written, the failures listed.
    let r = backup(&repo, &opts(None)).unwrap();
    assert_eq!(r.errors.len(), 9);
    // Mostly readable: written, with the failure listed.
    for i in 1..9 {
        fs::remove_file(src.join(format!("secret{i}"))).unwrap();
        fs::write(src.join(format!("ok{i}")), b"fine").unwrap();
    }
    let r = backup(&repo, &opts(Some(0.5))).unwrap();
    assert_eq!(r.errors.len(), 1);
}

#[test]
fn a_mostly_unreadable_source_yields_no_snapshot() {
    const CHILD: &str = "STASH_TEST_UNREADABLE_CHILD";
    if std::env::var_os(CHILD).is_some() || !nix::unistd::geteuid().is_root() {
        return unreadable_source_body();
    }
    // Root reads everything: run the body again in a child without the
    // capabilities that bypass file permissions, as a restricted agent or
    // a root-squashed NFS volume would be.
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_mostly_unreadable_source_yields_no_snapshot",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("setpriv (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[path = "engine/crafted.rs"]
mod crafted;
#[path = "engine/poison.rs"]
mod poison;
#[path = "engine/races.rs"]
mod races;

/// A restore that meets a missing pack still applies the metadata of the
/// directories it restored (as restic does), not only of the intact ones.
#[test]
fn a_missing_pack_leaves_directory_metadata_applied() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    repo.load_index().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("private")).unwrap();
    fs::write(src.join("private/lost"), b"content of a lost file").unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    filetime::set_file_mtime(src.join("private/lost"), old).unwrap();
    filetime::set_file_mtime(src.join("private"), old).unwrap();
    let res = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    // restic agrees the repository is sound before we damage it.
    let pw = stash_testkit::restic::write_password_file(t.path(), "pw");
    let restic =
        stash_testkit::restic::Restic::new(t.path().join("repo").display().to_string(), &pw)
            .with_cache_dir(t.path().join("cache"));
    restic.run_ok(["check"]);
    // Remove every pack holding data blobs.
    let idx = repo.index();
    let mut data_packs = std::collections::HashSet::new();
    let lost_node = {
        let mut tree = repo.load_tree(&res.snapshot.tree).unwrap();
        for c in src.iter().skip(1) {
            let n = tree
                .nodes
                .into_iter()
                .find(|n| n.name == c.as_encoded_bytes())
                .unwrap();
            tree = repo.load_tree(&n.subtree.unwrap()).unwrap();
        }
        let private = tree
            .nodes
            .into_iter()
            .find(|n| n.name == b"private")
            .unwrap();
        repo.load_tree(&private.subtree.unwrap())
            .unwrap()
            .nodes
            .remove(0)
    };
    for id in lost_node.content.unwrap() {
        data_packs.insert(idx.get(BlobType::Data, &id).unwrap().pack);
    }
    drop(idx);
    for p in data_packs {
        fs::remove_file(
            t.path()
                .join("repo/data")
                .join(&p.to_hex()[..2])
                .join(p.to_hex()),
        )
        .unwrap();
    }
    let target = t.path().join("target");
    let r = restore(
        &repo,
        &res.snapshot.tree,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!r.errors.is_empty(), "the lost file is reported");
    let restored = target.join(src.strip_prefix("/").unwrap()).join("private");
    let md = fs::metadata(&restored).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700);
    assert_eq!(md.mtime(), 1_000_000_000);
    assert!(
        !restored.join("lost").exists(),
        "no file with wrong content"
    );
}
