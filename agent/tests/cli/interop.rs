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

/// Flips one byte of a repository file (a new file, as storage would hold
/// a damaged copy).
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[40] ^= 0x55;
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, &bytes).unwrap();
}

/// Issue 19: one damaged snapshot file costs only itself. `snapshots`
/// warns like restic, lists the rest and exits 0; `latest` is the latest
/// readable snapshot (with a warning), so `ls latest` and `restore latest`
/// still work; restic lists the same snapshots.
#[test]
fn damaged_snapshot_file_costs_only_itself() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"first").unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    let s1 = stash.backup(&[&src], &["--time", "2024-01-01 00:00:00"]);
    std::fs::write(src.join("b"), b"second").unwrap();
    let s2 = stash.backup(&[&src], &["--time", "2024-02-01 00:00:00"]);
    let (id1, id2) = (
        s1["snapshot_id"].as_str().unwrap(),
        s2["snapshot_id"].as_str().unwrap(),
    );
    damage(&env.repo.join("snapshots").join(id2));

    let out = stash.run(&["snapshots", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("could not load snapshot {id2}")),
        "{stderr}"
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id1]);
    let restic_ids = env.restic().snapshot_ids();
    assert_eq!(restic_ids, vec![id1.to_string()]);

    let out = stash.run(&["ls", "latest"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("latest readable"), "{stderr}");
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains(&id1[..8]), "{ls}");
    assert!(!ls.lines().any(|l| l.ends_with("/b")), "{ls}");
    let target = env.path("t");
    stash.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(restored(&target, &src).join("a")).unwrap(),
        b"first"
    );
    // Asked for by id, the damaged one is an error that names it.
    let (_, err) = stash.fails(&["ls", id2]);
    assert!(err.contains(id2), "{err}");
}

/// Runs stash on a read-only bind mount of the repository, in a mount
/// namespace of its own (the mount goes away with the process, and root's
/// permission override does not apply to a read-only mount).
fn stash_on_read_only_repo(env: &Env, args: &[&str]) -> std::process::Output {
    let ro = env.path("repo-ro");
    std::fs::create_dir_all(&ro).unwrap();
    let stash = Stash {
        repo: ro.display().to_string(),
        password_file: env.password_file.clone(),
    };
    let inner = stash.command();
    let mut c = std::process::Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind -o ro "$0" "$1" && shift && exec "$@""#,
    ]);
    c.arg(&env.repo).arg(&ro).arg(inner.get_program());
    c.args(inner.get_args());
    c.args(args);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().expect("unshare")
}

/// Issue 19: a read-only repository (a read-only mount: nothing can be
/// written, not even by root) is checked and restored with `--no-lock`;
/// without it the lock cannot be written and the error says what to do;
/// commands that write refuse `--no-lock`.
#[test]
fn read_only_repository_is_checked_and_restored_with_no_lock() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    let stash = env.stash();
    stash.ok(&["init"]);
    stash.backup(&[&src], &[]);
    let before = checksums(&env.repo);

    let out = stash_on_read_only_repo(&env, &["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check without --no-lock must fail");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(err.contains("--no-lock"), "{err}");

    for args in [
        &["check", "--no-lock", "--read-data"][..],
        &["snapshots", "--no-lock"],
        &["ls", "--no-lock", "latest"],
    ] {
        let out = stash_on_read_only_repo(&env, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target = env.path("t");
    let out = stash_on_read_only_repo(
        &env,
        &[
            "restore",
            "--no-lock",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_trees_equal(&src, &restored(&target, &src), &CompareOptions::default());

    let (_, err) = stash.fails(&["backup", "--no-lock", src.to_str().unwrap()]);
    assert!(err.contains("--no-lock is only for"), "{err}");
    assert_eq!(checksums(&env.repo), before, "the repository changed");
}

/// Issue 19: `ls --json` prints what restic 0.19.1 prints for the same
/// snapshot, node for node and field for field (Go mode strings such as
/// `dtrwxrwxrwx` and `urwxr-xr-x`, no `linktarget`, no zero `mode`), and
/// `snapshots --json` sorts paths as restic does.
#[test]
fn ls_and_snapshots_json_match_restic_0_19() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("src");
    let other = env.path("a-other");
    std::fs::create_dir_all(src.join("sticky")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::set_permissions(src.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("sgid"), b"x").unwrap();
    std::fs::set_permissions(src.join("sgid"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    std::fs::write(src.join("plain"), b"plain").unwrap();
    std::os::unix::fs::symlink("plain", src.join("link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let stash = env.stash();
    stash.ok(&["init"]);
    // Paths given in an order that is not sorted.
    let s = stash.backup(&[&src, &other], &[]);
    let id = s["snapshot_id"].as_str().unwrap();
    let restic = env.restic().with_bin(stash_testkit::servers::bin("restic"));
    let node_lines = |out: String| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains(r#""struct_type":"node""#))
            .map(str::to_string)
            .collect()
    };
    let theirs = node_lines(restic.run_ok(["ls", "--json", id]));
    let ours_raw = node_lines(stash.ok(&["ls", "--json", id]));
    assert!(theirs.len() > 6, "{theirs:?}");
    assert_eq!(ours_raw.len(), theirs.len());
    for (o, t) in ours_raw.iter().zip(&theirs) {
        let (ov, tv): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(o).unwrap(),
            serde_json::from_str(t).unwrap(),
        );
        assert_eq!(ov, tv, "stash's line differs from restic's");
        // The same fields in the same order, byte for byte.
        assert_eq!(o, t);
    }
    let ours: Vec<serde_json::Value> = ours_raw
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let perms = |name: &str| {
        ours.iter()
            .find(|v| v["name"] == name)
            .map(|v| v["permissions"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(perms("sticky"), "dtrwxrwxrwx");
    assert_eq!(perms("suid"), "urwxr-xr-x");

    let ours: serde_json::Value =
        serde_json::from_str(&stash.ok(&["snapshots", "--json"])).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&restic.run_ok(["snapshots", "--json"])).unwrap();
    assert_eq!(ours[0]["paths"], theirs[0]["paths"]);
    let p = ours[0]["paths"].as_array().unwrap();
    assert_eq!(p[0].as_str().unwrap(), other.to_str().unwrap());
}
