//! `stash snapshots`.

use anyhow::Result;

use crate::cli::GlobalArgs;
use crate::repo;

pub fn run(g: &GlobalArgs, json: bool) -> Result<u8> {
    let r = repo::open(g)?;
    let all = r.snapshots_readable()?;
    super::warn_unreadable(&all.unreadable);
    let snaps = all.snapshots;
    if json {
        // restic sorts the paths of each snapshot in its JSON.
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, s)| {
                let mut s = s.clone();
                s.paths.sort();
                super::snapshot_json(id, &s)
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    let rows: Vec<[String; 5]> = snaps
        .iter()
        .map(|(id, s)| {
            [
                id.short(),
                s.time
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                s.hostname.clone(),
                s.tags.join(","),
                s.paths.join("\n"),
            ]
        })
        .collect();
    let headers = ["ID", "Time", "Host", "Tags", "Paths"];
    let w = widths(headers, &rows);
    let line = |cells: [&str; 5]| table_line(&w, cells);
    let header = line(headers);
    println!("{header}");
    println!("{}", "-".repeat(header.len().max(40)));
    for row in &rows {
        let mut paths = row[4].lines();
        println!(
            "{}",
            line([
                &row[0],
                &row[1],
                &row[2],
                &row[3],
                paths.next().unwrap_or("")
            ])
        );
        for p in paths {
            println!("{}", line(["", "", "", "", p]));
        }
    }
    println!("{}", "-".repeat(header.len().max(40)));
    println!("{} snapshots", rows.len());
    Ok(0)
}

/// `stash snapshots --adopt TOOL`: every snapshot with the identity
/// `tool` gave it; those that do not fit its layout are reported with what
/// they carry, never guessed at. Exit code 1 when none fits.
pub fn run_adopt(g: &GlobalArgs, tool: stash_api::adopt::Tool, json: bool) -> Result<u8> {
    use super::adopt::{found, Adoption};
    let r = repo::open(g)?;
    let _lock = super::read_lock(g, &r, "snapshots")?;
    let all = r.snapshots_readable()?;
    super::warn_unreadable(&all.unreadable);
    let adoption = Adoption::of(tool, all.snapshots);
    let verdict = adoption.not_the_tools();
    let time =
        |s: &repo_format::Snapshot| s.time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    if json {
        let fits: Vec<serde_json::Value> = adoption
            .fits
            .iter()
            .map(|(id, s, identity)| {
                serde_json::json!({
                    "id": id.to_hex(),
                    "short_id": id.short(),
                    "time": time(s),
                    "identity": identity,
                })
            })
            .collect();
        let misfits: Vec<serde_json::Value> = adoption
            .misfits
            .iter()
            .map(|(id, s, why)| {
                let mut paths = s.paths.clone();
                paths.sort();
                serde_json::json!({
                    "id": id.to_hex(),
                    "short_id": id.short(),
                    "time": time(s),
                    "hostname": s.hostname,
                    "paths": paths,
                    "tags": s.tags,
                    "reason": why.0,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "tool": tool.name(),
                "fits": verdict.is_none(),
                "snapshots": fits,
                "misfits": misfits,
            })
        );
    } else {
        let rows: Vec<[String; 4]> = adoption
            .fits
            .iter()
            .map(|(id, s, identity)| {
                [
                    id.short(),
                    s.time
                        .with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M:%S")
                        .to_string(),
                    identity.namespace.clone().unwrap_or_else(|| "-".into()),
                    identity.source(),
                ]
            })
            .collect();
        let headers = ["ID", "Time", "Namespace", "Source"];
        let w = widths(headers, &rows);
        let line = |cells: [&str; 4]| table_line(&w, cells);
        let header = line(headers);
        println!("{header}");
        println!("{}", "-".repeat(header.len().max(40)));
        for row in &rows {
            println!("{}", line([&row[0], &row[1], &row[2], &row[3]]));
        }
        println!("{}", "-".repeat(header.len().max(40)));
        println!(
            "{} snapshots fit {}'s layout, {} do not",
            rows.len(),
            tool.name(),
            adoption.misfits.len()
        );
        if matches!(
            tool,
            stash_api::adopt::Tool::Stash | stash_api::adopt::Tool::VolSync
        ) {
            println!("note: {}", tool.outside());
        }
    }
    for (id, s, why) in &adoption.misfits {
        eprintln!(
            "warning: snapshot {} of {} does not fit {}'s layout: {why}; found {}",
            id.short(),
            time(s),
            tool.name(),
            found(s)
        );
    }
    if let Some(v) = verdict {
        eprintln!("stash: {v}");
        return Ok(1);
    }
    Ok(0)
}

/// The width of each column of a table: its longest cell, header included
/// (in bytes, as the cells are ASCII but for paths, which come last).
fn widths<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> [usize; N] {
    let mut w = headers.map(str::len);
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    w
}

/// One line of a table: each cell but the last padded to its column's
/// width `w`, two spaces apart, without trailing spaces.
fn table_line<const N: usize>(w: &[usize; N], cells: [&str; N]) -> String {
    let mut line = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i + 1 < N {
            line.push_str(&format!("{c:width$}  ", width = w[i]));
        } else {
            line.push_str(c);
        }
    }
    line.trim_end().to_owned()
}
