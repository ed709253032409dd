//! `stash forget`: remove snapshots by retention policy, deciding exactly
//! as restic does (see `repo_format::ops::forget`).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use repo_format::ops::forget::{self, Group, Policy};
use repo_format::repository::lock::RepoLock;
use repo_format::{FileType, Id, Snapshot};

use crate::cli::{ForgetArgs, GlobalArgs};
use crate::repo;

/// restic's tag list syntax: `a,b` is the list [a, b]; `''` is the empty
/// tag, which matches snapshots without tags.
fn tag_list(s: &str) -> Vec<String> {
    s.split(',').map(str::to_string).collect()
}

fn policy(a: &ForgetArgs) -> Policy {
    Policy {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within: a.keep_within,
        keep_within_hourly: a.keep_within_hourly,
        keep_within_daily: a.keep_within_daily,
        keep_within_weekly: a.keep_within_weekly,
        keep_within_monthly: a.keep_within_monthly,
        keep_within_yearly: a.keep_within_yearly,
        keep_tags: a.keep_tags.iter().map(|t| tag_list(t)).collect(),
    }
}

/// restic's snapshot filter: any of the hosts, any of the tag lists, all
/// of the paths.
fn selected(s: &Snapshot, a: &ForgetArgs, tag_lists: &[Vec<String>]) -> bool {
    (a.hosts.is_empty() || a.hosts.contains(&s.hostname))
        && (tag_lists.is_empty() || tag_lists.iter().any(|l| forget::has_tags(s, l)))
        && a.paths.iter().all(|p| s.paths.contains(p))
}

pub fn run(g: &GlobalArgs, a: &ForgetArgs) -> Result<u8> {
    let policy = policy(a);
    if policy.is_empty() {
        bail!(
            "no policy was specified, no snapshots will be removed: give at least one \
             --keep-* option"
        );
    }
    let r = repo::open(g)?;
    let _lock = if a.dry_run {
        None
    } else {
        Some(RepoLock::acquire(r.clone(), true).context("forget needs an exclusive lock")?)
    };
    let tag_lists: Vec<Vec<String>> = a.tags.iter().map(|t| tag_list(t)).collect();
    let snaps: Vec<(Id, Snapshot)> = r
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| selected(s, a, &tag_lists))
        .collect();
    let groups = forget::apply(&snaps, a.group_by, &policy, chrono::Utc::now());
    let by_id: HashMap<Id, &Snapshot> = snaps.iter().map(|(id, s)| (*id, s)).collect();

    if a.json {
        let v: Vec<serde_json::Value> = groups.iter().map(|gr| group_json(gr, &by_id)).collect();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print_groups(&groups, &by_id, a);
    }

    if a.dry_run {
        if a.prune {
            let forgotten: Vec<Id> = groups.iter().flat_map(|gr| gr.remove.clone()).collect();
            let plan = repo_format::ops::prune::plan_without(
                &r,
                &super::prune::options(&a.prune_opts),
                &forgotten,
            )?;
            super::prune::print_dry_run(&plan.stats, a.json)?;
        }
        return Ok(0);
    }
    let mut failed = 0usize;
    let mut removed = 0usize;
    for id in groups.iter().flat_map(|gr| &gr.remove) {
        match r.backend().remove(FileType::Snapshot, &id.to_hex()) {
            Ok(()) => removed += 1,
            Err(e) => {
                failed += 1;
                eprintln!("could not remove snapshot {}: {e}", id.short());
            }
        }
    }
    if !a.json {
        println!("removed {removed} snapshots");
    }
    if failed > 0 {
        eprintln!("Fatal: {failed} snapshot(s) could not be removed; run forget again");
        return Ok(1);
    }
    if a.prune {
        // Under the same exclusive lock: nothing can start between the two.
        return super::prune::prune_locked(
            &r,
            &super::prune::options(&a.prune_opts),
            false,
            a.json,
        );
    }
    Ok(0)
}

/// One group as restic's `forget --json` prints it.
fn group_json(gr: &Group, by_id: &HashMap<Id, &Snapshot>) -> serde_json::Value {
    let snap = |id: &Id| super::snapshot_json(id, by_id[id]);
    let list = |ids: Vec<&Id>| {
        if ids.is_empty() {
            serde_json::Value::Null
        } else {
            ids.into_iter().map(snap).collect()
        }
    };
    let reasons: Vec<serde_json::Value> = gr
        .keep
        .iter()
        .map(|k| {
            serde_json::json!({
                "snapshot": snap(&k.id),
                "matches": k.reasons,
                "counters": k.counters,
            })
        })
        .collect();
    serde_json::json!({
        "tags": gr.key.tags,
        "host": gr.key.hostname,
        "paths": gr.key.paths,
        "keep": list(gr.keep.iter().map(|k| &k.id).collect()),
        "remove": list(gr.remove.iter().collect()),
        "reasons": reasons,
    })
}

fn print_groups(groups: &[Group], by_id: &HashMap<Id, &Snapshot>, a: &ForgetArgs) {
    for gr in groups {
        let mut what = Vec::new();
        if a.group_by.host {
            what.push(format!("host [{}]", gr.key.hostname));
        }
        if let Some(p) = &gr.key.paths {
            what.push(format!("paths [{}]", p.join(", ")));
        }
        if a.group_by.tags {
            what.push(format!(
                "tags [{}]",
                gr.key.tags.as_deref().unwrap_or_default().join(", ")
            ));
        }
        if what.is_empty() {
            println!("snapshots:");
        } else {
            println!("snapshots for ({}):", what.join(", "));
        }
        let line = |id: &Id, extra: &str| {
            let s = by_id[id];
            format!(
                "{}  {}  {:<12}  {:<16}  {}",
                id.short(),
                s.time
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S"),
                s.hostname,
                s.tags.join(","),
                extra
            )
        };
        println!("keep {} snapshots:", gr.keep.len());
        for k in &gr.keep {
            println!("{}", line(&k.id, &k.reasons.join(", ")).trim_end());
        }
        if !gr.remove.is_empty() {
            println!(
                "{} {} snapshots:",
                if a.dry_run { "would remove" } else { "remove" },
                gr.remove.len()
            );
            for id in &gr.remove {
                println!("{}", line(id, "").trim_end());
            }
        }
        println!();
    }
}
