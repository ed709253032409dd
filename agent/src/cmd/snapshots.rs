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
    let mut w = headers.map(str::len);
    for row in &rows {
        for (i, c) in row.iter().enumerate().take(4) {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
    };
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
            .trim_end()
        );
        for p in paths {
            println!("{}", line(["", "", "", "", p]).trim_end());
        }
    }
    println!("{}", "-".repeat(header.len().max(40)));
    println!("{} snapshots", rows.len());
    Ok(0)
}
