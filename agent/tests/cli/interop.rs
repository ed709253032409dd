//! stash writes, restic reads; restic writes, stash reads.

use super::support::*;

/// Foundation issue, point 1 and 3: the full fixture (a file over 100 MiB,
/// sparse file, hard links, FIFO, odd names, modes, xattrs, owners) backed
/// up by stash into a version 2 repository; restic checks it, lists it and
/// restores it identically, and so does stash.
#[test]
fn stash_v2_repository_is_read_checked_and_restored_by_restic() {
    let env = Env::new();
    let src = env.path("src");
    let report = build_tree(&src, &FixtureOptions::default()).expect("fixture");
    eprintln!("fixture: {report:?}");
    let stash = env.stash();
    stash.ok(&["init"]);
    let summary = stash.backup(
        &[&src],
        &["--tag", "first", "--tag", "fixture", "--host", "test-host"],
    );
    let snap_id = summary["snapshot_id"].as_str().unwrap().to_string();

    let restic = env.restic();
    restic.check_read_data();
    let snaps = restic.snapshots_json();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], snap_id.as_str());
    assert_eq!(snaps[0]["hostname"], "test-host");
    assert_eq!(snaps[0]["paths"][0], src.display().to_string());
    assert_eq!(snaps[0]["tags"], serde_json::json!(["first", "fixture"]));

    // restic ls sees every entry stash's ls sees, with the same types.
    let restic_ls = restic.ls_json(&snap_id);
    let stash_ls: Vec<serde_json::Value> = stash
        .ok(&["ls", "--json", &snap_id])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = |v: &serde_json::Value| {
        (
            v["path"].as_str().unwrap_or("").to_string(),
            v["type"].to_string(),
        )
    };
    let mut a: Vec<_> = restic_ls
        .iter()
        .filter(|v| v["struct_type"] == "node")
        .map(key)
        .collect();
    let mut b: Vec<_> = stash_ls
        .iter()
        .filter(|v| v["struct_type"] == "node")
        .map(key)
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert!(a.len() > 100, "fixture too small? {} entries", a.len());

    let rtarget = env.path("restic-restore");
    restic.restore(&snap_id, &rtarget);
    assert_restic_restore_equal(&src, &restored(&rtarget, &src));

    // stash's own restore is exact, non-UTF-8 symlink targets included.
    let starget = env.path("stash-restore");
    stash.ok(&["restore", "latest", "--target", starget.to_str().unwrap()]);
    assert_trees_equal(&src, &restored(&starget, &src), &CompareOptions::default());
    stash.ok(&["check", "--read-data"]);
}

#[test]
fn stash_v1_repository_is_read_by_restic() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    let stash = env.stash();
    stash.ok(&["init", "--repository-version", "1"]);
    let s = stash.backup(&[&src], &[]);
    let restic = env.restic();
    restic.check_read_data();
    let cfg: serde_json::Value = serde_json::from_str(&restic.run_ok(["cat", "config"])).unwrap();
    assert_eq!(cfg["version"], 1);
    let target = env.path("r");
    restic.restore(s["snapshot_id"].as_str().unwrap(), &target);
    assert_restic_restore_equal(&src, &restored(&target, &src));
}

/// Foundation issue, point 2: repositories made by restic, both versions.
#[test]
fn restic_repositories_v1_and_v2_are_read_and_extended_by_stash() {
    for version in [1u32, 2] {
        let env = Env::new();
        let src = env.path("src");
        build_tree(&src, &FixtureOptions::small()).expect("fixture");
        let restic = env.restic();
        restic.init(version);
        let short = restic.backup(&[&src], &["--tag", "by-restic"]);
        let rid = restic.snapshots_json()[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(rid.starts_with(&short));

        let stash = env.stash();
        let listed: serde_json::Value =
            serde_json::from_str(&stash.ok(&["snapshots", "--json"])).unwrap();
        assert_eq!(listed[0]["id"], rid.as_str(), "v{version}");
        assert_eq!(listed[0]["short_id"], &rid[..8]);
        assert_eq!(listed[0]["tags"][0], "by-restic");

        // What restic stored, stash restores; the only allowed difference is
        // the one restic 0.14 made when it stored the data.
        let t1 = env.path("stash-restore");
        stash.ok(&["restore", &rid[..10], "--target", t1.to_str().unwrap()]);
        assert_restic_restore_equal(&src, &restored(&t1, &src));
        stash.ok(&["check", "--read-data"]);

        // stash adds a snapshot (changed files and a new one) to restic's repository.
        std::fs::write(src.join("files/added-by-stash.txt"), b"new file").unwrap();
        std::fs::write(src.join("files/empty-3"), b"no longer empty").unwrap_or(());
        let s = stash.backup(&[&src], &["--tag", "by-stash"]);
        assert_eq!(
            s["parent"],
            rid.as_str(),
            "the restic snapshot is the parent"
        );
        restic.check_read_data();
        let t2 = env.path("restic-restore");
        restic.restore(s["snapshot_id"].as_str().unwrap(), &t2);
        assert_restic_restore_equal(&src, &restored(&t2, &src));
        if version == 1 {
            let cfg: serde_json::Value =
                serde_json::from_str(&stash.ok(&["cat", "config"])).unwrap();
            assert_eq!(cfg["version"], 1);
        }
    }
}

#[test]
fn snapshot_selection_json_shapes_and_cat() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"hello").unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    let s1 = stash.backup(&[&src], &[]);
    std::fs::write(src.join("d/g"), b"world").unwrap();
    let s2 = stash.backup(&[&src], &["--time", "2030-01-02 03:04:05"]);
    let id1 = s1["snapshot_id"].as_str().unwrap();
    let id2 = s2["snapshot_id"].as_str().unwrap();
    assert_eq!(s2["parent"], id1);
    assert_eq!(s2["files_unmodified"], 1);
    assert_eq!(s2["files_new"], 1);

    let list: serde_json::Value =
        serde_json::from_str(&stash.ok(&["snapshots", "--json"])).unwrap();
    for k in [
        "id", "short_id", "time", "tree", "paths", "hostname", "username",
    ] {
        assert!(list[0].get(k).is_some(), "missing {k} in {}", list[0]);
    }
    // latest is the one with the latest time.
    let ls = stash.ok(&["ls", "latest"]);
    assert!(ls.contains(&id2[..8]), "{ls}");
    assert!(ls.lines().any(|l| l.ends_with("/d/g")));
    let text = stash.ok(&["snapshots"]);
    assert!(
        text.contains(&id1[..8]) && text.contains("2 snapshots"),
        "{text}"
    );

    let cfg: serde_json::Value = serde_json::from_str(&stash.ok(&["cat", "config"])).unwrap();
    assert_eq!(cfg["version"], 2);
    let snap: serde_json::Value =
        serde_json::from_str(&stash.ok(&["cat", "snapshot", &id2[..8]])).unwrap();
    assert_eq!(snap["parent"], id1);
    let tree = snap["tree"].as_str().unwrap();
    let t: serde_json::Value = serde_json::from_str(&stash.ok(&["cat", "blob", tree])).unwrap();
    assert_eq!(t["nodes"][0]["name"], "tmp");

    let (_, err) = stash.fails(&["ls", "ffffffff"]);
    assert!(err.contains("no snapshot file matches"), "{err}");
    let (_, err) = stash.fails(&["restore", "latest"]);
    assert!(err.contains("--target"), "{err}");
}

#[test]
fn unreadable_file_is_reported_and_exit_code_is_3() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    // Reading /proc/self/mem at offset 0 fails with EIO, like a bad disk.
    let out = stash.run(&["backup", src.to_str().unwrap(), "/proc/self/mem"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/self/mem"), "{err}");
    env.restic().check_read_data();
}

/// Several keys per repository: restic opens with a key stash added, and
/// stash opens with a key restic added.
#[test]
fn keys_added_by_either_tool_open_the_repository() {
    use std::sync::Arc;
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let backend: Arc<dyn repo_format::Backend> =
        Arc::new(repo_format::LocalBackend::new(&env.repo));
    let repo = repo_format::Repository::open(backend, b"correct horse battery staple").unwrap();
    repo.add_key(
        b"second password",
        repo_format::KdfParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    let second_dir = env.path("second");
    std::fs::create_dir(&second_dir).unwrap();
    let second = write_password_file(&second_dir, "second password");
    let r2 = Restic::new(env.repo.display().to_string(), &second).with_cache_dir(env.path("rc"));
    r2.run_ok(["snapshots"]);
    let third_dir = env.path("third");
    std::fs::create_dir(&third_dir).unwrap();
    let third = write_password_file(&third_dir, "third password");
    r2.run_ok([
        "key".as_ref(),
        "add".as_ref(),
        "--new-password-file".as_ref(),
        third.as_os_str(),
    ]);
    let s3 = Stash {
        repo: env.repo.display().to_string(),
        password_file: third,
    };
    s3.ok(&["snapshots"]);
    assert_eq!(std::fs::read_dir(env.repo.join("keys")).unwrap().count(), 3);
}
