//! `stash ls`.

use anyhow::Result;
use repo_format::format::repofile::gotime;
use repo_format::{Id, Node, NodeType};

use crate::cli::GlobalArgs;
use crate::repo;

/// A Go `os.FileMode` as Go's `FileMode.String()` spells it, which is what
/// restic's `ls` prints as `permissions`: one letter per type or special
/// bit that is set, in Go's order (`dalTLDpSugct?`), or `-` when none is,
/// then `rwxrwxrwx`. So a sticky directory is `dtrwxrwxrwx` and a setuid
/// file `urwxr-xr-x`, exactly as scripts written for restic expect.
pub(crate) fn go_mode_string(m: u32) -> String {
    const LETTERS: &[u8] = b"dalTLDpSugct?";
    let mut s = String::with_capacity(LETTERS.len() + 9);
    for (i, c) in LETTERS.iter().enumerate() {
        if m & (1 << (31 - i)) != 0 {
            s.push(char::from(*c));
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in b"rwxrwxrwx".iter().enumerate() {
        s.push(if m & (1 << (8 - i)) != 0 {
            char::from(*c)
        } else {
            '-'
        });
    }
    s
}

/// One node as restic's `ls --json` prints it: restic's field names in
/// restic's order, `size` for files only, `mode` left out when it is zero
/// (Go's `omitempty`), and no field restic does not have.
#[derive(serde::Serialize)]
struct LsNode<'a> {
    name: String,
    #[serde(rename = "type")]
    tpe: &'a str,
    path: &'a str,
    uid: u32,
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    mode: u32,
    permissions: String,
    mtime: String,
    atime: String,
    ctime: String,
    inode: u64,
    message_type: &'static str,
    struct_type: &'static str,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn node_json(n: &Node, path: &str) -> String {
    let v = LsNode {
        name: n.name_lossy().into_owned(),
        tpe: n.node_type.as_str(),
        path,
        uid: n.uid,
        gid: n.gid,
        size: (n.node_type == NodeType::File).then_some(n.size),
        mode: n.mode,
        permissions: go_mode_string(n.mode),
        mtime: gotime::format(&n.mtime),
        atime: gotime::format(&n.atime),
        ctime: gotime::format(&n.ctime),
        inode: n.inode,
        message_type: "node",
        struct_type: "node",
    };
    serde_json::to_string(&v).expect("node json")
}

/// Lists a tree depth-first, each directory followed by its content, with
/// a stack of its own: a crafted snapshot's depth cannot exhaust ours.
fn walk(
    r: &repo_format::Repository,
    tree: &Id,
    prefix: &[u8],
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let mut stack = vec![(r.load_tree(tree)?.nodes.into_iter(), prefix.to_vec())];
    while let Some((nodes, prefix)) = stack.last_mut() {
        let Some(n) = nodes.next() else {
            stack.pop();
            continue;
        };
        let mut path = prefix.clone();
        path.push(b'/');
        path.extend_from_slice(&n.name);
        let shown = String::from_utf8_lossy(&path);
        if json {
            let v = node_json(&n, &shown);
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{shown}")?;
        }
        if let (NodeType::Dir, Some(st)) = (n.node_type, n.subtree) {
            stack.push((r.load_tree(&st)?.nodes.into_iter(), path));
        }
    }
    Ok(())
}

pub fn run(g: &GlobalArgs, spec: &str, json: bool) -> Result<u8> {
    let r = repo::open(g)?;
    let (id, s) = super::find_snapshot(&r, spec)?;
    r.load_index()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write;
    if json {
        let mut v = super::snapshot_json(&id, &s);
        v["message_type"] = "snapshot".into();
        v["struct_type"] = "snapshot".into();
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "snapshot {} of [{}] at {}):",
            id.short(),
            s.paths.join(" "),
            s.time
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S%.9f %z")
        )?;
    }
    walk(&r, &s.tree, b"", json, &mut out)?;
    out.flush()?;
    Ok(0)
}
