//! `backup --stdin`, `--stdin-from-command` and `dump`, with restic 0.19
//! and Debian's 0.14 as the oracle: each reads the other's stream
//! snapshots byte for byte, the layouts are restic's, and a command that
//! fails leaves no snapshot.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use stash_testkit::fixture::write_random_file;
use stash_testkit::servers;

use super::support::*;

fn restic19(env: &Env) -> Restic {
    env.restic().with_bin(servers::bin("restic"))
}

/// `stash ARGS` with `input` on standard input; (status, stdout, stderr).
fn stash_with_input(stash: &Stash, args: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = stash
        .command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stash");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("wait");
    feeder.join().unwrap().expect("feed stdin");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dump(stash: &Stash, args: &[&str]) -> Vec<u8> {
    let out = stash.run(args);
    assert!(
        out.status.success(),
        "stash {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn restic_out(r: &Restic, args: &[&str]) -> Vec<u8> {
    let out = r.run(args);
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The nodes of `restic ls --json latest` without their times (the two
/// tools' streams were backed up at different instants).
fn layout(r: &Restic) -> Vec<serde_json::Value> {
    let out = String::from_utf8(restic_out(r, &["ls", "--json", "latest"])).unwrap();
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["struct_type"] == "node")
        .map(|mut v| {
            for k in ["mtime", "atime", "ctime", "inode", "device_id"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// A 24 MiB stream (random and compressible halves) backed up by stash
/// with --stdin: restic 0.19 and 0.14 dump it byte for byte, `check
/// --read-data` is clean, the layout (paths, modes, owners, sizes) equals
/// restic 0.19's own --stdin snapshot of the same stream, and a second
/// backup of the same stream adds no data.
#[test]
fn stdin_snapshots_are_restics_layout_and_restic_dumps_them() {
    let env = Env::new();
    let input_file = env.path("input");
    write_random_file(&input_file, 12 << 20, 7).unwrap();
    let mut input = std::fs::read(&input_file).unwrap();
    input.extend((0..12u32 << 20).map(|i| (i % 251) as u8));
    let stash = env.stash();
    stash.ok(&["init"]);
    let args = [
        "backup",
        "--json",
        "--stdin",
        "--stdin-filename",
        "dumps/all.sql",
        "--tag",
        "db",
    ];
    let (ok, out, err) = stash_with_input(&stash, &args, &input);
    assert!(ok, "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(summary["parent"], serde_json::Value::Null);
    assert_eq!(summary["total_bytes_processed"], input.len() as u64);

    let r19 = restic19(&env);
    r19.check_read_data();
    let snaps = r19.snapshots_json();
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/dumps/all.sql"]));
    assert_eq!(snaps[0]["tags"], serde_json::json!(["db"]));
    assert!(restic_out(&r19, &["dump", "latest", "/dumps/all.sql"]) == input);
    assert!(restic_out(&env.restic(), &["dump", "latest", "/dumps/all.sql"]) == input);
    assert!(dump(&stash, &["dump", "latest", "/dumps/all.sql"]) == input);

    // Deduplicated like any file: the same stream again stores nothing new.
    let (ok, out, err) = stash_with_input(&stash, &args, &input);
    assert!(ok, "{err}");
    let again: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(again["data_blobs"], 0, "{again}");

    // restic 0.19's own --stdin snapshot of the same stream, in a
    // repository of its own, has the same layout.
    let theirs = Env::new();
    let t19 = restic19(&theirs);
    t19.init(2);
    let mut child = t19
        .command()
        .args([
            "backup",
            "--stdin",
            "--stdin-filename",
            "dumps/all.sql",
            "-q",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(layout(&r19), layout(&t19));

    // And stash dumps restic's byte for byte.
    let their_stash = theirs.stash();
    assert!(dump(&their_stash, &["dump", "latest", "/dumps/all.sql"]) == input);
    // --target writes the same into a file.
    let target = env.path("out.sql");
    their_stash.ok(&[
        "dump",
        "--target",
        target.to_str().unwrap(),
        "latest",
        "/dumps/all.sql",
    ]);
    assert!(std::fs::read(&target).unwrap() == input);
}

/// --stdin-from-command stores the command's output when it exits with 0
/// (restic 0.19 dumps it); a command that fails, even after writing, or
/// that cannot start, leaves no snapshot and says why.
#[test]
fn stdin_from_command_stores_only_what_a_successful_command_wrote() {
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let data = env.path("data");
    write_random_file(&data, 3 << 20, 11).unwrap();
    stash.ok(&[
        "backup",
        "--stdin-filename",
        "pg.dump",
        "--stdin-from-command",
        "--",
        "cat",
        data.to_str().unwrap(),
    ]);
    let r19 = restic19(&env);
    assert!(restic_out(&r19, &["dump", "latest", "/pg.dump"]) == std::fs::read(&data).unwrap());
    assert_eq!(r19.snapshots_json().as_array().unwrap().len(), 1);

    let (_, err) = stash.fails(&[
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "head -c 5000000 /dev/zero; exit 3",
    ]);
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("no snapshot written"), "{err}");
    let (_, err) = stash.fails(&[
        "backup",
        "--stdin-from-command",
        "--",
        "/nonexistent/pg_dumpall",
    ]);
    assert!(err.contains("starting command"), "{err}");
    assert_eq!(r19.snapshots_json().as_array().unwrap().len(), 1);
    r19.check_read_data();

    // Flags that make no sense for a stream are refused before anything
    // is written.
    let (_, err) = stash.fails(&["backup", "--stdin", data.to_str().unwrap()]);
    assert!(err.contains("give no paths"), "{err}");
    let (_, err) = stash.fails(&["backup", "--stdin", "--stdin-filename", "../x"]);
    assert!(err.contains("`..` is not allowed"), "{err}");
    let (_, err) = stash.fails(&["backup", "--stdin-from-command"]);
    assert!(err.contains("needs a command"), "{err}");
    let (_, err) = stash.fails(&["backup", "--stdin", "--exclude", "x"]);
    assert!(err.contains("apply to paths"), "{err}");
    assert_eq!(r19.snapshots_json().as_array().unwrap().len(), 1);
}

/// Runs the Python `script` on `archive` (written to a file, its path in
/// `sys.argv[1]`); parses what it prints as JSON.
fn read_archive<T: serde::de::DeserializeOwned>(archive: &[u8], script: &str) -> T {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("archive");
    std::fs::write(&p, archive).unwrap();
    let out = Command::new("python3")
        .args(["-c", script, p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Entries of a tar archive: (name, kind, mode, link target, content).
fn tar_entries(archive: &[u8]) -> Vec<(String, String, u32, String, Vec<u8>)> {
    let script = r#"
import sys, tarfile, json
out = []
with tarfile.open(sys.argv[1]) as t:
    for m in t.getmembers():
        data = t.extractfile(m).read().hex() if m.isfile() else ""
        out.append([m.name.rstrip("/"), m.type.decode(), m.mode, m.linkname, data])
print(json.dumps(out))
"#;
    let v: Vec<(String, String, u32, String, String)> = read_archive(archive, script);
    v.into_iter()
        .map(|(n, k, m, l, d)| (n, k, m, l, hex::decode(d).unwrap()))
        .collect()
}

/// Entries of a zip archive: (name, unix mode, content).
fn zip_entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let script = r#"
import sys, zipfile, json
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
print(json.dumps([[i.filename, i.external_attr >> 16, z.read(i).hex()] for i in z.infolist()]))
"#;
    let v: Vec<(String, u32, String)> = read_archive(archive, script);
    v.into_iter()
        .map(|(n, m, d)| (n, m, hex::decode(d).unwrap()))
        .collect()
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/private")).unwrap();
    std::fs::create_dir_all(root.join("d/empty")).unwrap();
    write_random_file(&root.join("d/big.bin"), 5 << 20, 3).unwrap();
    std::fs::write(root.join("d/a.txt"), "héllo\n").unwrap();
    std::fs::write(root.join("d/private/key"), "secret").unwrap();
    std::fs::write(root.join("d/empty.txt"), "").unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("d/link")).unwrap();
    let long = "n".repeat(120);
    std::fs::write(root.join("d").join(&long), "long name").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("d/private"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(root.join("d/a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

/// A directory dumped by stash as tar and as zip holds exactly what
/// restic 0.19's dump of the same snapshot holds: names, kinds, modes,
/// link targets and contents, in the same order. A file is dumped as its
/// bytes; a symlink or a path that is not there is a clear error.
#[test]
fn directories_dump_as_the_same_tar_and_zip_as_restics() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let stash = env.stash();
    stash.ok(&["init"]);
    stash.backup(&[&src], &[]);
    let r19 = restic19(&env);
    let d = src.join("d");
    let d = d.to_str().unwrap();

    let ours = tar_entries(&dump(&stash, &["dump", "latest", d]));
    let theirs = tar_entries(&restic_out(&r19, &["dump", "latest", d]));
    assert_eq!(
        ours.len(),
        8,
        "{:?}",
        ours.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert_eq!(ours, theirs);
    let ours = zip_entries(&dump(&stash, &["dump", "--archive", "zip", "latest", d]));
    let theirs = zip_entries(&restic_out(
        &r19,
        &["dump", "--archive", "zip", "latest", d],
    ));
    assert_eq!(ours, theirs);

    // The whole snapshot: the same entries as restic's.
    let ours: Vec<String> = tar_entries(&dump(&stash, &["dump", "latest", "/"]))
        .into_iter()
        .map(|e| e.0)
        .collect();
    let theirs: Vec<String> = tar_entries(&restic_out(&r19, &["dump", "latest", "/"]))
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(ours, theirs);

    let a = format!("{d}/a.txt");
    assert_eq!(dump(&stash, &["dump", "latest", &a]), "héllo\n".as_bytes());
    let (_, err) = stash.fails(&["dump", "latest", &format!("{d}/link")]);
    assert!(err.contains("is a symlink, not a file"), "{err}");
    let (_, err) = stash.fails(&["dump", "latest", &format!("{d}/nope")]);
    assert!(err.contains("does not exist"), "{err}");
    let (_, err) = stash.fails(&["dump", "latest", &format!("{a}/below")]);
    assert!(err.contains("not a directory"), "{err}");
    // A failed dump to --target leaves the target as it was.
    let target = env.path("keep");
    std::fs::write(&target, "old").unwrap();
    stash.fails(&[
        "dump",
        "--target",
        target.to_str().unwrap(),
        "latest",
        &format!("{d}/nope"),
    ]);
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
}
