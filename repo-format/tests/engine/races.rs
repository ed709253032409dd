//! A running pod that swaps a directory for a symlink while the agent
//! backs it up or restores into it (`renameat2(RENAME_EXCHANGE)` in a tight
//! loop): nothing outside the tree is read into a snapshot, and nothing
//! outside the target is written. Real threads, real file systems.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use repo_format::ops::backup::{backup, BackupOptions};
use repo_format::ops::restore::{restore, RestoreOptions};
use repo_format::{Id, NodeType, Repository};
use rustix::fs::{renameat_with, RenameFlags, CWD};

use super::{dir_node, file_node, new_repo, save_tree_unsorted};

const MARKER: &[u8] = b"OUTSIDE-MARKER-7f3a";

/// Exchanges `a` and `b` (both names in one directory) until `stop`;
/// re-creates `b` as a symlink to `outside` when the other side removed
/// it. Counts successful exchanges.
fn swapper(
    a: PathBuf,
    b: PathBuf,
    outside: PathBuf,
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE) {
                Ok(()) => {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // One side is missing (a restore replaced our symlink):
                    // put a symlink back where there is none.
                    for p in [&b, &a] {
                        if fs::symlink_metadata(p).is_err() {
                            let _ = std::os::unix::fs::symlink(&outside, p);
                        }
                    }
                }
            }
        }
    })
}

/// Every node name and content id below a tree, recursively.
fn names_in(repo: &Repository, tree: &Id, out: &mut Vec<Vec<u8>>) {
    for n in repo.load_tree(tree).unwrap().nodes {
        out.push(n.name.clone());
        if n.node_type == NodeType::Dir {
            names_in(repo, &n.subtree.unwrap(), out);
        }
    }
}

#[test]
fn backup_never_follows_a_directory_swapped_for_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    repo.load_index().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(
        outside.join(std::str::from_utf8(MARKER).unwrap()),
        b"host secret",
    )
    .unwrap();
    let vol = t.path().join("vol");
    fs::create_dir_all(vol.join("sub/deeper")).unwrap();
    for i in 0..4 {
        fs::write(vol.join(format!("sub/f{i}")), format!("data {i}")).unwrap();
        fs::write(vol.join(format!("sub/deeper/g{i}")), format!("deep {i}")).unwrap();
    }
    fs::write(vol.join("top"), b"top").unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("swap")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let h = swapper(
        vol.join("sub"),
        vol.join("swap"),
        outside.clone(),
        stop.clone(),
        swaps.clone(),
    );
    let (mut saw_dir, mut saw_link) = (0, 0);
    for i in 0..200 {
        let res = backup(
            &repo,
            &BackupOptions {
                paths: vec![vol.clone()],
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut names = Vec::new();
        names_in(&repo, &res.snapshot.tree, &mut names);
        assert!(
            !names.iter().any(|n| n == MARKER),
            "backup {i} read the outside directory: {:?}",
            names
                .iter()
                .map(|n| String::from_utf8_lossy(n))
                .collect::<Vec<_>>()
        );
        if names.iter().any(|n| n == b"f0") {
            saw_dir += 1;
        } else {
            saw_link += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    // The race really ran: the pod swapped thousands of times, and backups
    // saw "sub" both as the directory and as the symlink.
    assert!(swaps.load(Ordering::Relaxed) > 200, "{swaps:?}");
    assert!(
        saw_dir > 0 && saw_link > 0,
        "dir {saw_dir}, link {saw_link}"
    );
}

/// Content, mode, owner and mtime of every entry below `root`.
fn fingerprint(root: &Path) -> BTreeMap<String, (u32, u32, i64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let content = if md.is_file() {
                fs::read(&p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            out.insert(
                p.strip_prefix(root).unwrap().display().to_string(),
                (md.mode(), md.uid(), md.mtime(), md.mtime_nsec(), content),
            );
        }
    }
    out.insert(".".into(), {
        let md = fs::metadata(root).unwrap();
        (md.mode(), md.uid(), md.mtime(), md.mtime_nsec(), Vec::new())
    });
    out
}

#[test]
fn restore_never_writes_through_a_directory_swapped_for_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    // The snapshot: d/{f0..f3, e/g} with modes and old times, names the
    // decoy also has, so a followed write would change the decoy.
    let e = save_tree_unsorted(&repo, vec![file_node(b"g", &repo, b"snapshot g")]);
    let mut nodes: Vec<_> = (0..4)
        .map(|i| {
            let mut n = file_node(format!("f{i}").as_bytes(), &repo, b"snapshot data");
            n.mode = 0o600;
            n
        })
        .collect();
    nodes.push(dir_node(b"e", e));
    let d = save_tree_unsorted(&repo, nodes);
    let root = save_tree_unsorted(&repo, vec![dir_node(b"d", d)]);
    repo.flush().unwrap();

    let decoy = t.path().join("decoy");
    fs::create_dir_all(decoy.join("e")).unwrap();
    for i in 0..4 {
        fs::write(decoy.join(format!("f{i}")), b"decoy").unwrap();
    }
    fs::write(decoy.join("e/g"), b"decoy g").unwrap();
    let before = fingerprint(&decoy);

    let target = t.path().join("target");
    fs::create_dir_all(target.join("d")).unwrap();
    std::os::unix::fs::symlink(&decoy, target.join("swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let h = swapper(
        target.join("d"),
        target.join("swap"),
        decoy.clone(),
        stop.clone(),
        swaps.clone(),
    );
    let mut clean = 0;
    for _ in 0..200 {
        let res = restore(
            &repo,
            &root,
            &RestoreOptions {
                target: target.clone(),
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        if res.errors.is_empty() {
            clean += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 200, "{swaps:?}");
    assert_eq!(
        fingerprint(&decoy),
        before,
        "the decoy outside the target changed"
    );
    // Restores still work when the pod leaves the directory alone.
    let _ = clean;
    let _ = fs::remove_file(target.join("swap"));
    let d_now = target.join("d");
    if fs::symlink_metadata(&d_now)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        fs::remove_file(&d_now).unwrap();
    }
    let res = restore(
        &repo,
        &root,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(res.errors.is_empty(), "{:#?}", res.errors);
    assert_eq!(fs::read(target.join("d/e/g")).unwrap(), b"snapshot g");
}
