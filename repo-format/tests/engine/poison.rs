//! Poison (issue 14, failure 5): a volume or a repository built to make the
//! process that reads it fail must fail only that one operation, with the
//! reason, and never take the process down (in the node agent, every other
//! tenant's work on the node would go with it).

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use repo_format::ops::backup::{backup, BackupOptions};
use repo_format::ops::check::{check, CheckOptions};
use repo_format::ops::depth::MAX_DEPTH;
use repo_format::ops::restore::{restore, RestoreOptions};
use repo_format::{FileType, Id};
use serde_json::json;

use super::crafted::{dir, file, Crafter};
use super::new_repo;

/// Creates a chain of `levels` directories `d/d/d/...` under `top`
/// (through fds: the path soon outgrows PATH_MAX), with a file `leaf` in
/// the 10th level and in the last one; returns the 10th level's path.
fn chain(top: &Path, levels: usize) -> PathBuf {
    fs::create_dir_all(top).unwrap();
    let mut cur = fs::File::open(top).unwrap();
    let mut tenth = top.to_path_buf();
    for i in 1..=levels {
        let here = format!("/proc/self/fd/{}", cur.as_raw_fd());
        fs::create_dir(format!("{here}/d")).unwrap();
        cur = fs::File::open(format!("{here}/d")).unwrap();
        if i <= 10 {
            tenth.push("d");
        }
        if i == 10 || i == levels {
            fs::write(format!("/proc/self/fd/{}/leaf", cur.as_raw_fd()), b"x").unwrap();
        }
    }
    tenth
}

#[test]
fn a_directory_chain_deeper_than_the_limit_is_reported_not_a_stack_overflow() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let src = d.path().join("src");
    // Before the bound this overflowed the stack (abort) at about 1 000
    // levels in a debug build and 3 000 in a release build.
    let tenth = chain(&src, MAX_DEPTH + 500);
    let r = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..BackupOptions::default()
        },
    )
    .unwrap();
    let deep: Vec<_> = r
        .errors
        .iter()
        .filter(|e| {
            e.message
                .contains(&format!("deeper than {MAX_DEPTH} levels"))
        })
        .collect();
    assert_eq!(deep.len(), 1, "one directory cut off: {:?}", r.errors);
    assert_eq!(deep[0].path.components().count(), MAX_DEPTH + 1);
    // What is above the cut restores.
    let target = d.path().join("target");
    let res = restore(
        &repo,
        &r.snapshot.tree,
        &RestoreOptions {
            target: target.clone(),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    assert!(res.errors.is_empty(), "{:?}", res.errors);
    let rel = tenth.strip_prefix("/").unwrap();
    assert_eq!(fs::read(target.join(rel).join("leaf")).unwrap(), b"x");
    let report = check(&repo, CheckOptions::default()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn a_snapshot_nested_deeper_than_the_limit_restores_what_is_above_and_reports_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Crafter::new(d.path());
    let leaf = c.data(b"x");
    let levels = MAX_DEPTH + 1000;
    let mut tree = c.tree(json!([file("leaf", &leaf, json!({}))]));
    for i in (1..=levels).rev() {
        let mut nodes = vec![dir("d", &tree)];
        if i == 10 {
            nodes.push(file("marker", &leaf, json!({})));
        }
        tree = c.tree(json!(nodes));
    }
    let repo = c.finish(d.path(), &tree);
    let root = Id::from_hex(&tree).unwrap();
    // check walks with a stack of its own: the depth is no damage.
    let report = check(&repo, CheckOptions::default()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let target = d.path().join("target");
    let res = restore(
        &repo,
        &root,
        &RestoreOptions {
            target: target.clone(),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(res.errors.len(), 1, "{:?}", res.errors);
    assert!(
        res.errors[0].message.contains("deeper than"),
        "{:?}",
        res.errors
    );
    let mut p = target.clone();
    for _ in 0..9 {
        p.push("d");
    }
    assert_eq!(fs::read(p.join("marker")).unwrap(), b"x");
}

#[test]
fn a_zstd_bomb_in_a_snapshot_file_is_refused_within_bounded_memory() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    // 300 MiB of zeros compress to a few KiB.
    let mut z = vec![2u8];
    zstd::stream::copy_encode(std::io::repeat(0).take(300 << 20), &mut z, 1).unwrap();
    assert!(z.len() < 1 << 20, "{}", z.len());
    let ct = repo.key().encrypt(&z);
    let name = Id::hash(&ct).to_hex();
    repo.backend()
        .write(FileType::Snapshot, &name, &ct)
        .unwrap();
    let r = repo.snapshots_readable().unwrap();
    assert!(r.snapshots.is_empty());
    assert_eq!(r.unreadable.len(), 1, "{:?}", r.unreadable);
    let msg = r.unreadable[0].1.to_string();
    assert!(msg.contains("decompresses to more than"), "{msg}");
}

#[test]
fn a_blob_whose_index_entry_declares_a_huge_size_is_refused_before_any_allocation() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Crafter::new(d.path());
    // A real tree, but its index entry claims 4 GB uncompressed: the
    // decompression would reserve that much for it.
    let tree = c.compressed_tree(json!([]), 4_000_000_000);
    let repo = c.finish(d.path(), &tree);
    let e = repo
        .load_tree(&Id::from_hex(&tree).unwrap())
        .expect_err("refused");
    assert!(
        e.to_string()
            .contains("more than the 536870912 a tree blob may have"),
        "{e}"
    );
    // And a restore of it reports the damage instead of failing as a whole.
    let res = restore(
        &repo,
        &Id::from_hex(&tree).unwrap(),
        &RestoreOptions {
            target: d.path().join("t"),
            ..RestoreOptions::default()
        },
    );
    match res {
        Ok(r) => assert!(!r.errors.is_empty(), "{r:?}"),
        Err(e) => assert!(e.to_string().contains("more than"), "{e}"),
    }
}
