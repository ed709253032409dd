//! `stash ls`.

use anyhow::Result;
use repo_format::format::repofile::gotime;
use repo_format::format::repofile::tree::gomode;
use repo_format::{Id, Node, NodeType};
use serde_json::json;

use crate::cli::GlobalArgs;
use crate::repo;

/// `ls -l` style permissions string from a Go FileMode.
fn permissions(node: &Node) -> String {
    let m = node.mode;
    let t = match node.node_type {
        NodeType::Dir => 'd',
        NodeType::Symlink => 'L',
        NodeType::Dev => 'D',
        NodeType::Chardev => 'c',
        NodeType::Fifo => 'p',
        NodeType::Socket => 'S',
        _ => '-',
    };
    let mut s = String::new();
    s.push(t);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x']
        .iter()
        .enumerate()
    {
        s.push(if m & (1 << (8 - i)) != 0 { *c } else { '-' });
    }
    if m & gomode::SETUID != 0 {
        s.insert(0, 'u');
    }
    if m & gomode::SETGID != 0 {
        s.insert(0, 'g');
    }
    if m & gomode::STICKY != 0 {
        s.insert(0, 't');
    }
    s
}

fn walk(
    r: &repo_format::Repository,
    tree: &Id,
    prefix: &[u8],
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let t = r.load_tree(tree)?;
    for n in &t.nodes {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(&n.name);
        let shown = String::from_utf8_lossy(&path);
        if json {
            let mut v = json!({
                "name": n.name_lossy(),
                "type": n.node_type.as_str(),
                "path": shown,
                "uid": n.uid,
                "gid": n.gid,
                "mode": n.mode,
                "permissions": permissions(n),
                "mtime": gotime::format(&n.mtime),
                "atime": gotime::format(&n.atime),
                "ctime": gotime::format(&n.ctime),
                "struct_type": "node",
            });
            if n.node_type == NodeType::File {
                v["size"] = n.size.into();
            }
            if n.node_type == NodeType::Symlink {
                v["linktarget"] = String::from_utf8_lossy(&n.link_target).into();
            }
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{shown}")?;
        }
        if let (NodeType::Dir, Some(st)) = (n.node_type, n.subtree) {
            walk(r, &st, &path, json, out)?;
        }
    }
    Ok(())
}

pub fn run(g: &GlobalArgs, spec: &str, json: bool) -> Result<u8> {
    let r = repo::open(g)?;
    let (id, s) = r.find_snapshot(spec)?;
    r.load_index()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write;
    if json {
        let mut v = super::snapshot_json(&id, &s);
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
