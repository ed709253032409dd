//! The parallel pipeline: same results whatever the thread count,
//! compression modes, restore over existing data, sparse files, progress.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::support::*;

fn snapshot_tree_of(stash: &Stash, snap: &str, src: &Path) -> String {
    // The tree id of `src` itself: walk `stash cat blob` down the path.
    let snap: serde_json::Value =
        serde_json::from_str(&stash.ok(&["cat", "snapshot", snap])).unwrap();
    let mut tree = snap["tree"].as_str().unwrap().to_string();
    for comp in src.iter().skip(1) {
        let t: serde_json::Value =
            serde_json::from_str(&stash.ok(&["cat", "blob", &tree])).unwrap();
        let node = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == comp.to_str().unwrap())
            .unwrap();
        tree = node["subtree"].as_str().unwrap().to_string();
    }
    tree
}

/// Issue 3: the pipeline gives the same snapshot whatever the thread count
/// (and upload parallelism and pack size). Chunk boundaries depend on the
/// repository key, so the runs share one repository; `--force` makes each
/// run read and chunk every file again.
#[test]
fn same_snapshot_whatever_the_thread_count() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    let mut trees = Vec::new();
    for (threads, uploads, pack) in [("1", "1", "4"), ("4", "3", "16"), ("2", "8", "8")] {
        let mut c = stash.command();
        c.env("RAYON_NUM_THREADS", threads)
            .args([
                "backup",
                "--json",
                "--force",
                "--upload-threads",
                uploads,
                "--pack-size",
                pack,
            ])
            .arg(&src);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        trees.push(snapshot_tree_of(
            &stash,
            summary["snapshot_id"].as_str().unwrap(),
            &src,
        ));
    }
    assert_eq!(trees[0], trees[1], "thread count changed the snapshot");
    assert_eq!(trees[0], trees[2], "thread count changed the snapshot");
    env.restic().check_read_data();
}

#[test]
fn every_compression_mode_is_readable_by_restic() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("text"), "compressible text ".repeat(200_000)).unwrap();
    stash_testkit::fixture::write_random_file(&src.join("random"), 3 << 20, 9).unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    let mut stored = Vec::new();
    for mode in ["off", "auto", "fastest", "better", "max"] {
        // --force: read and store again (only new blobs count, so use a
        // fresh file per mode to see the mode's effect).
        fs::write(src.join("text"), format!("{mode} ").repeat(400_000)).unwrap();
        let s = stash.backup(&[&src], &["--compression", mode]);
        stored.push((
            mode,
            s["data_added"].as_u64().unwrap(),
            s["data_added_packed"].as_u64().unwrap(),
        ));
    }
    let off = stored[0];
    assert!(off.2 >= off.1, "off stores at least the plaintext: {off:?}");
    for (mode, added, packed) in &stored[1..] {
        assert!(
            packed < added,
            "{mode} compresses text: {added} -> {packed}"
        );
    }
    env.restic().check_read_data();
    let target = env.path("r");
    env.restic().restore("latest", &target);
    assert_trees_equal(&src, &restored(&target, &src), &CompareOptions::default());
    let (_, err) = stash.fails(&["backup", "--compression", "zip", src.to_str().unwrap()]);
    assert!(err.contains("zip"), "{err}");
}

#[test]
fn sparse_files_are_restored_with_holes() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"data at the start", 0).unwrap();
    f.write_all_at(b"data in the middle", 32 << 20).unwrap();
    drop(f);
    let stash = env.stash();
    stash.ok(&["init"]);
    stash.backup(&[&src], &[]);
    let target = env.path("t");
    stash.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
    let r = restored(&target, &src).join("sparse");
    assert_eq!(fs::read(&r).unwrap(), fs::read(src.join("sparse")).unwrap());
    let allocated = fs::metadata(&r).unwrap().blocks() * 512;
    assert!(
        allocated < 16 << 20,
        "restored file allocates {allocated} bytes of 64 MiB"
    );
}

#[test]
fn restore_over_existing_data_with_overwrite_and_delete() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"original a").unwrap();
    stash_testkit::fixture::write_random_file(&src.join("d/big"), 5 << 20, 3).unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    stash.backup(&[&src], &[]);
    let target = env.path("t");
    let t = target.to_str().unwrap();
    stash.ok(&["restore", "latest", "--target", t]);
    let r = restored(&target, &src);

    // never: local changes stay.
    fs::write(r.join("a"), b"local change").unwrap();
    stash.ok(&["restore", "latest", "--target", t, "--overwrite", "never"]);
    assert_eq!(fs::read(r.join("a")).unwrap(), b"local change");

    // if-newer: the local file is newer than the snapshot's: it stays; made
    // older than the snapshot's, it is replaced.
    stash.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-newer",
    ]);
    assert_eq!(fs::read(r.join("a")).unwrap(), b"local change");
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_mtime(r.join("a"), old).unwrap();
    stash.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-newer",
    ]);
    assert_eq!(fs::read(r.join("a")).unwrap(), b"original a");
    fs::write(r.join("a"), b"local change").unwrap();

    // if-changed: a file whose size and mtime match is left alone; a
    // changed one is repaired by rewriting only what differs.
    let mut big = fs::read(r.join("d/big")).unwrap();
    big[3 << 20] ^= 0xff;
    fs::write(r.join("d/big"), &big).unwrap();
    fs::write(r.join("extra"), b"not in the snapshot").unwrap();
    let out = stash.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-changed",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["message_type"], "summary");
    assert!(
        summary["bytes_written"].as_u64().unwrap() < 4 << 20,
        "{summary}"
    );
    assert_eq!(
        fs::read(r.join("d/big")).unwrap(),
        fs::read(src.join("d/big")).unwrap()
    );
    assert_eq!(fs::read(r.join("a")).unwrap(), b"original a");
    assert!(r.join("extra").exists(), "no --delete: extra files stay");

    // always + delete: exact copy of the snapshot.
    fs::write(r.join("a"), b"local change again").unwrap();
    stash.ok(&["restore", "latest", "--target", t, "--delete", "--verify"]);
    assert!(!r.join("extra").exists());
    assert_trees_equal(&src, &r, &CompareOptions::default());
}

#[test]
fn json_progress_lines_are_restic_shaped() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Enough data to take over a second in a debug build.
    for i in 0..6 {
        stash_testkit::fixture::write_random_file(&src.join(format!("f{i}")), 24 << 20, i).unwrap();
    }
    let stash = env.stash();
    stash.ok(&["init"]);
    let out = stash.ok(&[
        "backup",
        "--json",
        "--compression",
        "max",
        src.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["message_type"], "summary");
    let status: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message_type"] == "status")
        .collect();
    assert!(!status.is_empty(), "no status lines in {out}");
    for s in &status {
        for k in [
            "percent_done",
            "total_files",
            "files_done",
            "total_bytes",
            "bytes_done",
            "seconds_elapsed",
        ] {
            assert!(s.get(k).is_some(), "{k} missing in {s}");
        }
    }
    let s = status.last().unwrap();
    assert_eq!(s["total_files"], 6);
    assert!(s["bytes_done"].as_u64().unwrap() <= s["total_bytes"].as_u64().unwrap());
}
