//! `stash forget` decides exactly as restic does (issue 5, point 1).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use stash_testkit::servers;

use super::support::*;

/// A small deterministic generator, so a failure can be reproduced.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// The zone the snapshots are made in: it has DST changes, so bucketing in
/// local time and "within" arithmetic across them are exercised.
const ZONE: &str = "Europe/Berlin";

/// Snapshot times (local wall clock in [`ZONE`]), all distinct: two years
/// spread thinly, a dense fortnight with several snapshots per hour, edge
/// cases (DST changes, year ends, ISO week 1 starting in December) and one
/// snapshot in the future, which "within" rules must not measure from.
fn snapshot_times() -> Vec<NaiveDateTime> {
    let mut rng = Lcg(5);
    let mut times = BTreeSet::new();
    let at = |date: NaiveDate, h: u64, m: u64, s: u64| {
        date.and_hms_opt(h as u32, m as u32, s as u32).unwrap()
    };
    let start = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    while times.len() < 150 {
        let day = start + Duration::days(rng.next(700) as i64);
        // Hour 2 does not exist, or exists twice, on DST change days.
        let hour = 3 + rng.next(21);
        times.insert(at(day, hour, rng.next(60), rng.next(60)));
    }
    let dense = NaiveDate::from_ymd_opt(2024, 12, 1).unwrap();
    while times.len() < 220 {
        let day = dense + Duration::days(rng.next(14) as i64);
        let hour = [8, 9, 10, 20][rng.next(4) as usize];
        times.insert(at(day, hour, rng.next(60), rng.next(60)));
    }
    for s in [
        "2023-03-26 01:30:00",
        "2023-03-26 03:30:00",
        "2023-10-29 01:30:00",
        "2023-10-29 03:30:00",
        "2023-12-31 23:59:59",
        "2024-01-01 00:00:01",
        "2024-12-29 23:00:00",
        "2024-12-30 00:30:00",
        "2031-01-01 12:00:00",
    ] {
        times.insert(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap());
    }
    times.into_iter().collect()
}

/// Per group (host, paths, tags): the kept and the removed snapshot ids.
type Decisions = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

fn sorted_strings(v: &serde_json::Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    s.sort();
    s
}

fn ids(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `forget --json` output (stash's or restic's).
fn decisions(out: &str) -> Decisions {
    let line = out
        .lines()
        .find(|l| l.starts_with('['))
        .unwrap_or_else(|| panic!("no JSON array in forget output:\n{out}"));
    let groups: serde_json::Value = serde_json::from_str(line).unwrap();
    groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let key = format!(
                "host={:?} paths={:?} tags={:?}",
                g["host"].as_str().unwrap(),
                sorted_strings(&g["paths"]),
                sorted_strings(&g["tags"])
            );
            (key, (ids(&g["keep"]), ids(&g["remove"])))
        })
        .collect()
}

/// What restic before 0.16 decides, given stash's (current restic's)
/// decision: 0.16 added one rule, keeping the oldest snapshot of a group
/// while a `--keep-*` count is left ("oldest … snapshot"); without it those
/// snapshots go.
fn without_keep_oldest(stash_out: &str) -> Decisions {
    let mut d = decisions(stash_out);
    let line = stash_out.lines().find(|l| l.starts_with('[')).unwrap();
    let groups: serde_json::Value = serde_json::from_str(line).unwrap();
    let only_oldest: BTreeSet<String> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["reasons"].as_array().unwrap().iter())
        .filter(|r| {
            r["matches"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m.as_str().unwrap().starts_with("oldest "))
        })
        .map(|r| r["snapshot"]["id"].as_str().unwrap().to_string())
        .collect();
    for (keep, remove) in d.values_mut() {
        for id in &only_oldest {
            if keep.remove(id) {
                remove.insert(id.clone());
            }
        }
    }
    d
}

/// Insists that both decide the same, naming the groups and snapshots
/// (short ids) where they do not.
fn assert_same(ours: &Decisions, theirs: &Decisions, what: &str, restic: &str) {
    if ours == theirs {
        return;
    }
    let short =
        |s: &BTreeSet<String>| -> Vec<String> { s.iter().map(|i| i[..8].to_string()).collect() };
    let mut report = Vec::new();
    let keys: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    let none = (BTreeSet::new(), BTreeSet::new());
    for k in keys {
        let (ok, or) = ours.get(k).unwrap_or(&none);
        let (tk, tr) = theirs.get(k).unwrap_or(&none);
        if (ok, or) != (tk, tr) {
            report.push(format!(
                "{k}: kept only by stash {:?}, kept only by {restic} {:?}, removed only by stash {:?}, removed only by {restic} {:?}",
                short(&ok.difference(tk).cloned().collect()),
                short(&tk.difference(ok).cloned().collect()),
                short(&or.difference(tr).cloned().collect()),
                short(&tr.difference(or).cloned().collect()),
            ));
        }
    }
    panic!("{what}: stash and {restic} differ:\n{}", report.join("\n"));
}

fn stash_in(stash: &Stash, tz: &str, args: &[&str]) -> String {
    let out = stash.command().env("TZ", tz).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "stash {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn backup_at(stash: &Stash, src: &Path, time: &NaiveDateTime, host: &str, tags: &[&str]) {
    let time = time.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut args = vec!["backup", "--time", &time, "--host", host];
    for t in tags {
        args.extend(["--tag", t]);
    }
    let src = src.display().to_string();
    args.push(&src);
    stash_in(stash, ZONE, &args);
}

/// Issue 5, point 1: on 220+ snapshots over two years, with several hosts,
/// paths and tag sets, `stash forget --dry-run --json` keeps and removes
/// exactly what restic's does, group by group, for a spread of policies and
/// in two time zones; then a real `stash forget` leaves exactly the kept
/// snapshots, and restic checks the repository clean.
#[test]
fn forget_decides_like_restic() {
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let (src_a, src_b) = (env.path("src-a"), env.path("src-b"));
    for d in [&src_a, &src_b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), d.display().to_string()).unwrap();
    }
    let mut rng = Lcg(11);
    let times = snapshot_times();
    for t in &times {
        let host = if rng.next(5) == 0 { "beta" } else { "alpha" };
        let src = if rng.next(7) == 0 { &src_b } else { &src_a };
        let tags: &[&str] = match rng.next(20) {
            0..=7 => &[],
            8..=14 => &["daily"],
            15..=17 => &["manual"],
            _ => &["daily", "manual"],
        };
        backup_at(&stash, src, t, host, tags);
    }
    assert!(times.len() >= 220);

    let src_b_path = src_b.display().to_string();
    // (policy, whether restic 0.14 supports every option in it)
    let policies: Vec<(Vec<&str>, bool)> = vec![
        (vec!["--keep-last", "10"], true),
        (vec!["--keep-hourly", "30"], true),
        (vec!["--keep-daily", "7"], true),
        (
            vec![
                "--keep-daily",
                "7",
                "--keep-weekly",
                "5",
                "--keep-monthly",
                "12",
                "--keep-yearly",
                "3",
            ],
            true,
        ),
        (vec!["--keep-weekly", "200", "--keep-yearly", "10"], true),
        (vec!["--keep-within", "1m15d"], true),
        (vec!["--keep-within", "1y2m3d4h"], true),
        (
            vec![
                "--keep-within-daily",
                "10d",
                "--keep-within-weekly",
                "2m",
                "--keep-within-monthly",
                "1y",
            ],
            true,
        ),
        (
            vec!["--keep-within-hourly", "3d", "--keep-within-yearly", "5y"],
            true,
        ),
        (vec!["--keep-tag", "manual", "--keep-last", "3"], true),
        (
            vec!["--keep-tag", "daily,manual", "--keep-hourly", "100"],
            true,
        ),
        (vec!["--group-by", "host", "--keep-monthly", "6"], true),
        (vec!["--group-by", "tags", "--keep-weekly", "4"], true),
        (vec!["--group-by", "host,tags,paths", "-d", "3"], true),
        (vec!["--group-by", "", "--keep-daily", "20"], true),
        (
            vec!["--host", "alpha", "--tag", "daily", "--keep-last", "5"],
            true,
        ),
        (
            vec![
                "--path",
                &src_b_path,
                "--keep-weekly",
                "3",
                "--keep-within",
                "10d",
            ],
            true,
        ),
        (
            vec!["--tag", "manual", "--tag", "", "--keep-monthly", "2"],
            true,
        ),
        (vec!["--keep-daily", "unlimited", "--keep-last", "2"], false),
        (
            vec!["--keep-monthly", "unlimited", "--keep-yearly", "unlimited"],
            false,
        ),
    ];

    let current = Restic::new(env.repo.display().to_string(), &env.password_file)
        .with_bin(servers::bin("restic"))
        .with_cache_dir(env.path("restic-cache-current"));
    for tz in [ZONE, "UTC"] {
        let old = env.restic().with_env("TZ", tz);
        let new = current.clone().with_env("TZ", tz);
        for (policy, old_supports) in &policies {
            let mut args = vec!["forget", "--dry-run", "--json"];
            args.extend(policy);
            let ours = stash_in(&stash, tz, &args);
            let d = decisions(&ours);
            let kept: usize = d.values().map(|(k, _)| k.len()).sum();
            let removed: usize = d.values().map(|(_, r)| r.len()).sum();
            eprintln!(
                "TZ={tz} {policy:?}: {} groups, keep {kept}, remove {removed}",
                d.len()
            );
            let what = format!("TZ={tz} {policy:?}");
            let current_version = format!("restic {}", servers::version("restic"));
            assert_same(&d, &decisions(&new.run_ok(&args)), &what, &current_version);
            if *old_supports {
                let theirs = decisions(&old.run_ok(&args));
                assert_same(&without_keep_oldest(&ours), &theirs, &what, "restic 0.14");
            }
        }
    }

    // A real forget: restic sees exactly the kept snapshots.
    let policy = [
        "--keep-daily",
        "7",
        "--keep-weekly",
        "5",
        "--keep-monthly",
        "12",
        "--keep-tag",
        "manual",
    ];
    let mut args = vec!["forget", "--json"];
    args.extend(policy);
    let d = decisions(&stash_in(&stash, ZONE, &args));
    let kept: BTreeSet<String> = d.values().flat_map(|(k, _)| k.iter().cloned()).collect();
    let removed: usize = d.values().map(|(_, r)| r.len()).sum();
    assert!(removed > 100, "the policy should forget most snapshots");
    assert_eq!(kept.len() + removed, times.len());
    let left: BTreeSet<String> = env.restic().snapshot_ids().into_iter().collect();
    assert_eq!(left, kept);
    env.restic().run_ok(["check"]);
    // The exclusive lock is gone with the command.
    let locks = std::fs::read_dir(env.repo.join("locks")).unwrap().count();
    assert_eq!(locks, 0, "forget left a lock behind");
    // Forgetting again with the same policy changes nothing.
    let mut again = vec!["forget", "--dry-run", "--json"];
    again.extend(policy);
    let d = decisions(&stash_in(&stash, ZONE, &again));
    assert!(d.values().all(|(_, r)| r.is_empty()), "{d:?}");
}

/// An empty policy is refused, and nothing is forgotten.
#[test]
fn forget_refuses_an_empty_policy() {
    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    stash.backup(&[&src], &[]);
    stash.backup(&[&src], &[]);
    let (_, err) = stash.fails(&["forget", "--prune"]);
    assert!(err.contains("no policy was specified"), "{err}");
    let (_, err) = stash.fails(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--max-unused",
        "100%",
    ]);
    assert!(err.contains("below 100"), "{err}");
    assert_eq!(env.restic().snapshots_json().as_array().unwrap().len(), 2);
}
