//! `stash key` and `stash unlock` (issue 5), with restic as the oracle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use repo_format::format::repofile::lock::LockFile;
use repo_format::repository::whoami;
use repo_format::{FileType, LocalBackend, Repository};

use super::support::*;

const PASSWORD: &str = "correct horse battery staple";

/// A password file in its own directory under the test's scratch space.
fn password_file(env: &Env, name: &str, password: &str) -> PathBuf {
    let dir = env.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    write_password_file(&dir, password)
}

fn stash_with(env: &Env, password_file: &Path) -> Stash {
    Stash {
        repo: env.repo.display().to_string(),
        password_file: password_file.to_path_buf(),
    }
}

fn restic_with(env: &Env, password_file: &Path) -> Restic {
    Restic::new(env.repo.display().to_string(), password_file)
        .with_cache_dir(env.path("restic-cache"))
}

fn key_list(stash: &Stash) -> Vec<serde_json::Value> {
    let out = stash.ok(&["key", "list", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("key list json")
        .as_array()
        .expect("array")
        .clone()
}

fn current_id(keys: &[serde_json::Value]) -> String {
    let cur: Vec<_> = keys.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(cur.len(), 1, "exactly one current key: {keys:?}");
    cur[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn keys_added_by_stash_and_restic_work_for_both() {
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let original = current_id(&key_list(&stash));

    // A key added by stash opens the repository for restic.
    let second = password_file(&env, "second", "second password");
    let out = stash.ok(&[
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
    ]);
    assert!(out.contains("saved new key"), "{out}");
    restic_with(&env, &second).run_ok(["snapshots"]);
    restic_with(&env, &second).run_ok(["cat", "config"]);

    // A key added by restic is listed by stash, and opens it for stash.
    let third = password_file(&env, "third", "third password");
    env.restic()
        .run_ok(["key", "add", "--new-password-file", third.to_str().unwrap()]);
    let keys = key_list(&stash);
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(current_id(&keys), original);
    for k in &keys {
        assert_eq!(k["id"].as_str().unwrap().len(), 8, "{k}");
        assert!(!k["userName"].as_str().unwrap().is_empty(), "{k}");
        assert!(!k["hostName"].as_str().unwrap().is_empty(), "{k}");
        assert!(!k["created"].as_str().unwrap().is_empty(), "{k}");
    }
    let via_third = key_list(&stash_with(&env, &third));
    assert_ne!(current_id(&via_third), original);

    // restic sees the same keys.
    let restic_keys: serde_json::Value =
        serde_json::from_str(&env.restic().run_ok(["key", "list", "--json"])).unwrap();
    let mut a: Vec<&str> = restic_keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    let mut b: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let text = stash.ok(&["key", "list"]);
    assert!(text.contains(&format!("*{original}")), "{text}");

    // The key in use cannot be removed; another one can, by prefix.
    let (_, err) = stash.fails(&["key", "remove", &original]);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(key_list(&stash).len(), 3);
    let third_id = current_id(&via_third);
    stash.ok(&["key", "remove", &third_id[..6]]);
    assert_eq!(key_list(&stash).len(), 2);
    assert!(!restic_with(&env, &third)
        .run(["snapshots"])
        .status
        .success());
    stash_with(&env, &third).fails(&["snapshots"]);
}

#[test]
fn passwd_replaces_the_key_in_use() {
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let new = password_file(&env, "new", "a new password");
    stash.ok(&[
        "key",
        "passwd",
        "--new-password-file",
        new.to_str().unwrap(),
    ]);

    stash.fails(&["snapshots"]);
    assert!(!env.restic().run(["snapshots"]).status.success());
    let keys = key_list(&stash_with(&env, &new));
    assert_eq!(keys.len(), 1, "{keys:?}");
    restic_with(&env, &new).run_ok(["snapshots"]);
}

fn write_lock(repo: &Repository, minutes_ago: i64, pid: i64) -> String {
    let (username, hostname) = whoami();
    let lock = LockFile {
        time: chrono::Local::now().fixed_offset() - chrono::Duration::minutes(minutes_ago),
        exclusive: false,
        hostname,
        username,
        pid,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    repo.save_unpacked(FileType::Lock, &lock.to_json())
        .unwrap()
        .to_hex()
}

fn locks(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.repo.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn unlock_removes_stale_locks_only_unless_remove_all() {
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let backend: Arc<dyn repo_format::Backend> = Arc::new(LocalBackend::new(&env.repo));
    let repo = Repository::open(backend, PASSWORD.as_bytes()).unwrap();
    let me = i64::from(std::process::id());
    // No process has this id: it is above any pid_max.
    let dead = write_lock(&repo, 1, i64::from(i32::MAX));
    let old = write_lock(&repo, 31, me);
    let live = write_lock(&repo, 0, me);
    let mut all = vec![dead, old, live.clone()];
    all.sort();
    assert_eq!(locks(&env), all);

    let out = stash.ok(&["unlock"]);
    assert!(out.contains("removed 2 locks"), "{out}");
    assert_eq!(locks(&env), vec![live]);
    let out = stash.ok(&["unlock"]);
    assert!(out.contains("removed 0 locks"), "{out}");

    let out = stash.ok(&["unlock", "--remove-all"]);
    assert!(out.contains("removed 1 locks"), "{out}");
    assert!(locks(&env).is_empty());
}
