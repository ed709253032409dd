//! Snapshots a tenant crafts: written here from the format alone (tree
//! JSON, pack, index and snapshot files encrypted with the repository key
//! and stored as files), not by our writer, so they can hold what our
//! writer never would. Each hostile entry is refused or neutralised and
//! reported, and nothing outside the target changes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use repo_format::ops::check::{check, CheckOptions};
use repo_format::ops::restore::{restore, Privileged, RestoreOptions, RestoreResult};
use repo_format::{Backend, FileType, Id, LocalBackend, Repository};
use serde_json::{json, Value};

use super::new_repo;

/// An independent writer: one pack of the given blobs, its index, a snapshot.
pub(super) struct Crafter {
    pub(super) repo: Repository,
    blobs: Vec<(u8, Id, Vec<u8>)>,
    /// Declared uncompressed lengths, by blob id (blobs stored compressed).
    declared: std::collections::HashMap<Id, u64>,
}

impl Crafter {
    pub(super) fn new(dir: &Path) -> Crafter {
        Crafter {
            repo: new_repo(dir),
            blobs: Vec::new(),
            declared: Default::default(),
        }
    }

    /// A tree blob stored compressed, whose index entry declares
    /// `declared` bytes uncompressed.
    pub(super) fn compressed_tree(&mut self, nodes: Value, declared: u64) -> String {
        let mut plain = serde_json::to_vec(&json!({ "nodes": nodes })).unwrap();
        plain.push(b'\n');
        let id = Id::hash(&plain);
        let z = zstd::bulk::compress(&plain, 1).unwrap();
        self.blobs.push((1, id, self.repo.key().encrypt(&z)));
        self.declared.insert(id, declared);
        id.to_hex()
    }

    pub(super) fn data(&mut self, content: &[u8]) -> String {
        let id = Id::hash(content);
        self.blobs.push((0, id, self.repo.key().encrypt(content)));
        id.to_hex()
    }

    pub(super) fn tree(&mut self, nodes: Value) -> String {
        let mut plain = serde_json::to_vec(&json!({ "nodes": nodes })).unwrap();
        plain.push(b'\n');
        let id = Id::hash(&plain);
        self.blobs.push((1, id, self.repo.key().encrypt(&plain)));
        id.to_hex()
    }

    fn save_unpacked(&self, tpe: FileType, v: &Value) {
        let ct = self.repo.key().encrypt(&serde_json::to_vec(v).unwrap());
        self.repo
            .backend()
            .write(tpe, &Id::hash(&ct).to_hex(), &ct)
            .unwrap();
    }

    /// Writes pack, index and a snapshot of `root`; returns the repository
    /// opened afresh, index loaded.
    pub(super) fn finish(self, dir: &Path, root: &str) -> Repository {
        let mut pack = Vec::new();
        let mut header = Vec::new();
        let mut index_blobs = Vec::new();
        for (tpe, id, ct) in &self.blobs {
            let mut entry = json!({
                "id": id.to_hex(),
                "type": if *tpe == 0 { "data" } else { "tree" },
                "offset": pack.len(),
                "length": ct.len(),
            });
            if let Some(u) = self.declared.get(id) {
                entry["uncompressed_length"] = json!(u);
            }
            index_blobs.push(entry);
            header.push(*tpe);
            header.extend_from_slice(&(ct.len() as u32).to_le_bytes());
            header.extend_from_slice(&id.0);
            pack.extend_from_slice(ct);
        }
        let eh = self.repo.key().encrypt(&header);
        pack.extend_from_slice(&eh);
        pack.extend_from_slice(&(eh.len() as u32).to_le_bytes());
        let pack_id = Id::hash(&pack);
        self.repo
            .backend()
            .write(FileType::Pack, &pack_id.to_hex(), &pack)
            .unwrap();
        self.save_unpacked(
            FileType::Index,
            &json!({"packs": [{"id": pack_id.to_hex(), "blobs": index_blobs}]}),
        );
        self.save_unpacked(
            FileType::Snapshot,
            &json!({"time": "2024-01-02T03:04:05Z", "tree": root, "paths": ["/x"],
                    "hostname": "tenant", "username": "u"}),
        );
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("repo")));
        let repo = Repository::open(b, b"pw").unwrap();
        repo.load_index().unwrap();
        repo
    }
}

pub(super) fn file(name: &str, content: &str, extra: Value) -> Value {
    let mut v = json!({"name": name, "type": "file", "mode": 0o644, "size": 1,
                       "content": [content], "uid": 0, "gid": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn symlink(name: &str, target: &Path) -> Value {
    json!({"name": name, "type": "symlink", "mode": 0o777 | (1u32 << 27),
           "linktarget": target.display().to_string()})
}

pub(super) fn dir(name: &str, subtree: &str) -> Value {
    json!({"name": name, "type": "dir", "mode": 0o755 | (1u32 << 31), "subtree": subtree})
}

/// A decoy directory next to the target, and its fingerprint.
fn decoy(t: &Path) -> (std::path::PathBuf, Vec<(String, u32, Vec<u8>)>) {
    let d = t.join("outside");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("victim"), b"untouched").unwrap();
    (d.clone(), print(&d))
}

fn print(d: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            let c = if md.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().into_owned(), md.mode(), c)
        })
        .collect();
    v.sort();
    v
}

fn run(repo: &Repository, target: &Path, privileged: Privileged) -> RestoreResult {
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    restore(
        repo,
        &snap.tree,
        &RestoreOptions {
            target: target.to_path_buf(),
            privileged,
            skip_top: vec![b".stash-restore-done".to_vec()],
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn duplicate_names_in_every_order_are_refused_and_checked_as_damage() {
    for (first, second) in [
        ("file", "symlink"),
        ("symlink", "file"),
        ("dir", "symlink"),
        ("symlink", "dir"),
    ] {
        let t = tempfile::tempdir().unwrap();
        let (outside, before) = decoy(t.path());
        let mut c = Crafter::new(t.path());
        let blob = c.data(b"x");
        let empty = c.tree(json!([]));
        let node = |kind: &str| match kind {
            "file" => file("n", &blob, json!({})),
            "symlink" => symlink("n", &outside),
            _ => dir("n", &empty),
        };
        let sub = c.tree(json!([
            node(first),
            node(second),
            file("inner", &blob, json!({}))
        ]));
        let root = c.tree(json!([dir("d", &sub), file("ok", &blob, json!({}))]));
        let repo = c.finish(t.path(), &root);
        let target = t.path().join("target");
        let res = run(&repo, &target, Privileged::default());
        assert!(
            res.errors.iter().any(|e| e.message.contains("twice")),
            "{first}/{second}: {:#?}",
            res.errors
        );
        // The damaged directory is empty; the rest is restored.
        assert_eq!(fs::read(target.join("ok")).unwrap(), b"x");
        assert!(fs::read_dir(target.join("d")).unwrap().next().is_none());
        assert_eq!(print(&outside), before);
        let report = check(&repo, CheckOptions::default()).unwrap();
        assert!(
            report.errors.iter().any(|e| e.contains("twice")),
            "{first}/{second}: check: {:#?}",
            report.errors
        );
    }
}

#[test]
fn privileged_content_is_left_out_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let (outside, before) = decoy(t.path());
    let mut c = Crafter::new(t.path());
    let blob = c.data(b"x");
    // setuid root (Go's ModeSetuid is 1<<23), a file capability, a
    // trusted.* xattr, a block device for the host's disk, a char device.
    let caps = base64_of(&[1, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    let root = c.tree(json!([
        file("suid", &blob, json!({"mode": 0o755 | (1u32 << 23)})),
        file("capped", &blob, json!({"extended_attributes": [
            {"name": "security.capability", "value": caps},
            {"name": "trusted.overlay.opaque", "value": base64_of(b"y")},
            {"name": "user.fine", "value": base64_of(b"ok")}]})),
        {"name": "disk", "type": "dev", "mode": 0o660 | (1u32 << 26), "device": 0x0800},
        {"name": "mem", "type": "chardev", "mode": 0o660 | (1u32 << 26) | (1u32 << 21), "device": 0x0101},
        symlink(".stash-restore-done.uid", &outside.join("victim")),
    ]));
    let repo = c.finish(t.path(), &root);
    let target = t.path().join("target");
    let res = run(&repo, &target, Privileged::default());
    let skipped: Vec<String> = res
        .skipped
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    let has = |p: &str, m: &str| skipped.iter().any(|s| s.starts_with(p) && s.contains(m));
    assert!(has("/suid", "setuid"), "{skipped:#?}");
    assert!(has("/capped", "security.capability"), "{skipped:#?}");
    assert!(has("/capped", "trusted.overlay.opaque"), "{skipped:#?}");
    assert!(has("/disk", "device node"), "{skipped:#?}");
    assert!(has("/mem", "device node"), "{skipped:#?}");
    assert!(has("/.stash-restore-done.uid", "reserved"), "{skipped:#?}");
    let mode = fs::metadata(target.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid bit restored");
    assert!(xattr::get(target.join("capped"), "security.capability")
        .unwrap()
        .is_none());
    assert!(!target.join("disk").exists() && !target.join("mem").exists());
    assert!(fs::symlink_metadata(target.join(".stash-restore-done.uid")).is_err());
    assert_eq!(print(&outside), before);

    // Allowed: setuid is restored (devices and capabilities need root and
    // a file system that takes them, so only what this test can check).
    let target2 = t.path().join("target2");
    let res = run(
        &repo,
        &target2,
        Privileged {
            setid: true,
            ..Default::default()
        },
    );
    assert!(
        !res.skipped.iter().any(|e| e.path == "/suid"),
        "{:#?}",
        res.skipped
    );
    let mode = fs::metadata(target2.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
}

#[test]
fn hard_links_only_join_files_of_the_same_restore() {
    let t = tempfile::tempdir().unwrap();
    let (outside, before) = decoy(t.path());
    let mut c = Crafter::new(t.path());
    let blob = c.data(b"x");
    // Two names of "inode 42"; the first one is excluded, so the second
    // must be restored from its own content, never linked to anything else.
    let link = json!({"links": 2, "inode": 42, "device_id": 7});
    let root = c.tree(json!([
        file("a", &blob, link.clone()),
        file("b", &blob, link.clone()),
        symlink("esc", &outside.join("victim")),
        file("c", &blob, link),
    ]));
    let repo = c.finish(t.path(), &root);
    let target = t.path().join("target");
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let res = restore(
        &repo,
        &snap.tree,
        &RestoreOptions {
            target: target.clone(),
            excludes: vec!["/a".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(res.errors.is_empty(), "{:#?}", res.errors);
    let b = fs::metadata(target.join("b")).unwrap();
    let cc = fs::metadata(target.join("c")).unwrap();
    assert_eq!(b.ino(), cc.ino(), "b and c are one inode");
    assert_eq!(b.nlink(), 2);
    assert_eq!(fs::read(target.join("c")).unwrap(), b"x");
    assert_eq!(print(&outside), before);
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `dump` of crafted snapshots: a file whose node claims another size than
/// its content has, and names that are more than one path component, stop
/// the dump with the reason instead of yielding an archive that runs
/// entries into each other or names places outside where it is unpacked.
#[test]
fn dump_refuses_lying_sizes_and_names_that_escape() {
    use repo_format::ops::dump::{dump_archive, dump_file, lookup, Archive};
    for (claimed, what) in [(3u64, "more"), (99, "5")] {
        let t = tempfile::tempdir().unwrap();
        let mut c = Crafter::new(t.path());
        let blob = c.data(b"12345");
        let f = file("f", &blob, json!({"size": claimed}));
        let root = c.tree(json!([f]));
        let repo = c.finish(t.path(), &root);
        let (_, snap) = repo.find_snapshot("latest").unwrap();
        let (_, node) = lookup(&repo, &snap.tree, "/f").unwrap();
        let mut out = Vec::new();
        let e = dump_file(&repo, &node, &mut out).unwrap_err().to_string();
        assert!(
            e.contains(&format!("says {claimed} bytes, its content has {what}")),
            "{e}"
        );
        for format in [Archive::Tar, Archive::Zip] {
            let (shown, top) = lookup(&repo, &snap.tree, "/").unwrap();
            let e = dump_archive(&repo, &shown, &top, format, &mut Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains("its content has"), "{format:?}: {e}");
        }
    }
    for bad in ["../../etc/passwd", "a/b", "..", "."] {
        let t = tempfile::tempdir().unwrap();
        let mut c = Crafter::new(t.path());
        let blob = c.data(b"x");
        let f = file(bad, &blob, json!({}));
        let inner = c.tree(json!([f]));
        let root = c.tree(json!([dir("d", &inner)]));
        let repo = c.finish(t.path(), &root);
        let (_, snap) = repo.find_snapshot("latest").unwrap();
        let (shown, top) = lookup(&repo, &snap.tree, "/").unwrap();
        for format in [Archive::Tar, Archive::Zip] {
            let mut out = Vec::new();
            let r = dump_archive(&repo, &shown, &top, format, &mut out);
            let e = r.expect_err(bad).to_string();
            assert!(e.contains("entry name"), "{bad:?} {format:?}: {e}");
        }
    }
}
