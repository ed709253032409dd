//! Bad input gives a clear error naming the file, and loses no data.

use std::fs;
use std::path::{Path, PathBuf};

use super::support::*;

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Rewrites a (read-only) repository file.
fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = fs::read(path).unwrap();
    f(&mut b);
    fs::remove_file(path).unwrap();
    fs::write(path, &b).unwrap();
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn setup() -> (Env, PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..20u64 {
        // Incompressible, so the data pack is the largest pack.
        stash_testkit::fixture::write_random_file(
            &src.join(format!("sub/file{i}")),
            1000 * (i + 1),
            i,
        )
        .unwrap();
    }
    env.stash().ok(&["init"]);
    env.stash().backup(&[&src], &[]);
    (env, src)
}

#[test]
fn wrong_password_and_missing_repository() {
    let (env, _) = setup();
    let bad_pw = write_password_file(
        &env.path("x").parent().unwrap().join("wrongdir").tap_mkdir(),
        "wrong",
    );
    let s = Stash {
        repo: env.repo.display().to_string(),
        password_file: bad_pw,
    };
    let (code, err) = s.fails(&["snapshots"]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong password"), "{err}");
    assert!(err.lines().count() <= 2, "{err}");

    let missing = Stash {
        repo: env.path("nope").display().to_string(),
        password_file: env.password_file.clone(),
    };
    let (_, err) = missing.fails(&["snapshots"]);
    assert!(
        err.contains("no repository at") && err.contains("nope"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (_, err) = env.stash().fails(&["init"]);
    assert!(err.contains("already exists"), "{err}");
    let (_, err) = missing.fails(&["backup", "/definitely/not/here"]);
    assert!(err.contains("no repository"), "{err}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn damaged_snapshot_file_is_named() {
    let (env, _) = setup();
    let snap = files_in(&env.repo.join("snapshots")).pop().unwrap();
    damage(&snap, |b| b[30] ^= 0x40);
    // Like restic: the listing warns, naming the file, and goes on (the
    // only snapshot is damaged, so it lists none).
    let out = env.stash().run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&name(&snap)), "{err}");
    // Nothing readable is left for `latest`: an error naming the file.
    let (_, err) = env.stash().fails(&[
        "restore",
        "latest",
        "--target",
        env.path("t").to_str().unwrap(),
    ]);
    assert!(err.contains(&name(&snap)), "{err}");
    let out = env.stash().run(&["check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&name(&snap)));
}

#[test]
fn truncated_or_flipped_index_is_named() {
    let (env, _) = setup();
    let idx = files_in(&env.repo.join("index")).pop().unwrap();
    damage(&idx, |b| b.truncate(b.len() / 2));
    let (_, err) = env.stash().fails(&["ls", "latest"]);
    assert!(err.contains(&name(&idx)), "{err}");
    let out = env.stash().run(&["check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("index file {}", name(&idx))),
        "{text}"
    );
}

#[test]
fn truncated_pack_is_named_by_check() {
    let (env, _) = setup();
    let packs = files_in(&env.repo.join("data"));
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    damage(pack, |b| b.truncate(b.len() - 100));
    let out = env.stash().run(&["check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pack {}", name(pack))) && text.contains("truncated"),
        "{text}"
    );
}

#[test]
fn bit_flip_in_pack_names_pack_and_blob_and_restore_skips_only_that() {
    let (env, src) = setup();
    let packs = files_in(&env.repo.join("data"));
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    damage(pack, |b| b[100] ^= 0x01);
    let out = env.stash().run(&["check"]);
    assert!(
        out.status.success(),
        "structure is intact: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = env.stash().run(&["check", "--read-data"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&name(pack)) && l.contains("blob") && l.contains("at offset 0"))
        .unwrap_or_else(|| panic!("no error naming the pack and the damaged blob:\n{text}"));
    assert!(line.contains("data blob"), "{line}");
    // restic agrees that it is damaged.
    let r = env.restic().run(["check", "--read-data"]);
    assert!(!r.status.success());

    let target = env.path("target");
    let out = env
        .stash()
        .run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let bad: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(bad.len(), 1, "exactly one file is damaged:\n{err}");
    // Every other file is restored intact.
    let restored_dir = restored(&target, &src).join("sub");
    let mut intact = 0;
    for i in 0..20 {
        let p = restored_dir.join(format!("file{i}"));
        if p.exists() {
            assert_eq!(
                fs::read(&p).unwrap(),
                fs::read(src.join(format!("sub/file{i}"))).unwrap()
            );
            intact += 1;
        } else {
            assert!(bad[0].contains(&format!("file{i}")), "{}", bad[0]);
        }
    }
    assert_eq!(intact, 19);
}

#[test]
fn bad_arguments_are_explained() {
    let env = Env::new();
    let (_, err) = env.stash().fails(&["init", "--repository-version", "3"]);
    assert!(err.contains("must be 1 or 2"), "{err}");
    let (_, err) = env.stash().fails(&["cat", "nonsense"]);
    assert!(
        err.contains("no repository") || err.contains("cannot cat"),
        "{err}"
    );
    let no_repo = std::process::Command::new(env!("CARGO_BIN_EXE_stash"))
        .env_remove("STASH_REPOSITORY")
        .env_remove("RESTIC_REPOSITORY")
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(!no_repo.status.success());
    assert!(String::from_utf8_lossy(&no_repo.stderr).contains("no repository given"));
    let sftp = Stash {
        repo: "sftp:host:/srv/repo".into(),
        password_file: env.password_file.clone(),
    };
    let (_, err) = sftp.fails(&["init"]);
    assert!(err.contains("sftp backend is not available"), "{err}");
}

#[test]
fn environment_variables_name_repository_and_password() {
    let (env, _) = setup();
    for (repo_var, pw_var, pw_value) in [
        (
            "STASH_REPOSITORY",
            "STASH_PASSWORD_FILE",
            env.password_file.display().to_string(),
        ),
        (
            "RESTIC_REPOSITORY",
            "RESTIC_PASSWORD",
            "correct horse battery staple".to_string(),
        ),
        (
            "STASH_REPOSITORY",
            "STASH_PASSWORD",
            "correct horse battery staple".to_string(),
        ),
        (
            "RESTIC_REPOSITORY",
            "RESTIC_PASSWORD_FILE",
            env.password_file.display().to_string(),
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stash"))
            .env_clear()
            .env(repo_var, &env.repo)
            .env(pw_var, &pw_value)
            .args(["snapshots", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{repo_var} {pw_var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
    }
    let local = format!("local:{}", env.repo.display());
    let s = Stash {
        repo: local,
        password_file: env.password_file.clone(),
    };
    s.ok(&["snapshots"]);
}
