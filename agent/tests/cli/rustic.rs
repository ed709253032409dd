//! rustic (restic's format in Rust, `rustic-rs` pinned in
//! hack/test-servers.versions) as a second oracle: rustic writes, stash
//! reads, checks, restores and extends; stash writes, rustic reads, checks
//! and restores.

use std::path::Path;
use std::process::Command;

use super::support::*;

/// rustic bound to the test's repository and password, with no config
/// profile, no cache and no progress bars.
fn rustic(env: &Env) -> Command {
    let mut c = Command::new(stash_testkit::servers::bin("rustic"));
    for v in [
        "RUSTIC_REPOSITORY",
        "RUSTIC_PASSWORD",
        "RUSTIC_PASSWORD_FILE",
        "RUSTIC_PASSWORD_COMMAND",
    ] {
        c.env_remove(v);
    }
    // No profile from the machine's config directories.
    c.env("HOME", env.path("rustic-home"))
        .env("XDG_CONFIG_HOME", env.path("rustic-home/.config"))
        .arg("--no-progress")
        .arg("--no-cache")
        .arg("-r")
        .arg(&env.repo)
        .arg("--password-file")
        .arg(&env.password_file)
        .stdin(std::process::Stdio::null());
    c
}

fn rustic_ok(env: &Env, args: &[&str]) -> String {
    let out = rustic(env).args(args).output().expect("run rustic");
    assert!(
        out.status.success(),
        "rustic {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rustic_snapshot_ids(env: &Env) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&rustic_ok(env, &["snapshots", "--json"])).expect("json");
    // rustic groups snapshots: [[group, [snapshot...]], ...].
    let mut ids = Vec::new();
    fn collect(v: &serde_json::Value, ids: &mut Vec<String>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, ids)),
            serde_json::Value::Object(o) => {
                if let (Some(id), Some(_)) = (o.get("id"), o.get("tree")) {
                    ids.push(id.as_str().unwrap().to_string());
                } else {
                    o.values().for_each(|x| collect(x, ids));
                }
            }
            _ => {}
        }
    }
    collect(&v, &mut ids);
    ids.sort();
    ids
}

/// What rustic restores: the content, modes and mtimes of what was backed
/// up (rustic's restore of the snapshot root lands where restic's does).
fn assert_restored(src: &Path, target: &Path) {
    assert_trees_equal(
        src,
        &restored(target, src),
        &CompareOptions {
            check_xattrs: false,
            check_hard_links: false,
            ..CompareOptions::default()
        },
    );
}

/// rustic writes (its key files lack `created`, `username`, `hostname`);
/// stash opens, lists, checks, restores identically, and adds a snapshot
/// that rustic then checks and restores.
#[test]
fn rustic_repository_is_read_checked_restored_and_extended_by_stash() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    rustic_ok(&env, &["init"]);
    rustic_ok(&env, &["backup", src.to_str().unwrap()]);
    let ids = rustic_snapshot_ids(&env);
    assert_eq!(ids.len(), 1);

    let stash = env.stash();
    let listed: serde_json::Value =
        serde_json::from_str(&stash.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], ids[0].as_str());
    stash.ok(&["check", "--read-data"]);
    let t1 = env.path("stash-restore");
    stash.ok(&["restore", &ids[0], "--target", t1.to_str().unwrap()]);
    assert_restored(&src, &t1);

    std::fs::write(src.join("files/added-by-stash.txt"), b"new file").unwrap();
    let s = stash.backup(&[&src], &["--tag", "by-stash"]);
    let ours = s["snapshot_id"].as_str().unwrap();
    assert_eq!(
        s["parent"],
        ids[0].as_str(),
        "rustic's snapshot is the parent"
    );
    rustic_ok(&env, &["check", "--read-data"]);
    assert!(rustic_snapshot_ids(&env).contains(&ours.to_string()));
    let t2 = env.path("rustic-restore");
    rustic_ok(&env, &["restore", ours, t2.to_str().unwrap()]);
    assert_restored(&src, &t2);
}

/// stash writes; rustic lists, checks (reading all data) and restores.
#[test]
fn stash_repository_is_read_checked_and_restored_by_rustic() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src, &FixtureOptions::small()).expect("fixture");
    let stash = env.stash();
    stash.ok(&["init"]);
    let s = stash.backup(&[&src], &["--host", "h1"]);
    let id = s["snapshot_id"].as_str().unwrap();
    assert_eq!(rustic_snapshot_ids(&env), vec![id.to_string()]);
    rustic_ok(&env, &["check", "--read-data"]);
    let t = env.path("rustic-restore");
    rustic_ok(&env, &["restore", id, t.to_str().unwrap()]);
    assert_restored(&src, &t);
}
