//! A database dump streamed into the repository and back, through the
//! command line, against a real PostgreSQL (issue 16, until the Kubernetes
//! database target exists): `stash backup --stdin-from-command --
//! pg_dumpall` while a writer keeps inserting, everything dropped, and
//! `stash dump | psql` restores a consistent point in time.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stash_testkit::postgres::Postgres;
use stash_testkit::servers;

use super::support::*;

/// Per table: row count and a sum of row hashes, read in one transaction.
fn fingerprint(pg: &Postgres) -> Vec<String> {
    let mut v = Vec::new();
    for (db, tables) in [("shop", &["items", "bulk"][..]), ("audit", &["notes"][..])] {
        let sums: Vec<String> = tables
            .iter()
            .map(|t| {
                format!(
                    "(select count(*) || ':' || coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::bigint), 0) from {t} r)"
                )
            })
            .collect();
        v.push(format!(
            "{db}: {}",
            pg.sql(db, &format!("select {}", sums.join(" || ' ' || ")))
        ));
    }
    v.push(pg.sql(
        "shop",
        "select string_agg(md5(lo_get(oid)), ',' order by oid) from pg_largeobject_metadata",
    ));
    v.push(pg.sql(
        "postgres",
        "select string_agg(rolname || ':' || rolcanlogin, ',' order by rolname) from pg_roles where rolname = 'shop_owner'",
    ));
    v
}

/// The ids of `audit.events` are 1..=n without gaps: n.
fn contiguous_events(pg: &Postgres) -> i64 {
    let r = pg.sql(
        "audit",
        "select count(*) || ' ' || coalesce(max(id), 0) from events",
    );
    let (count, max) = r.split_once(' ').unwrap();
    assert_eq!(count, max, "events are not 1..=n: {r}");
    count.parse().unwrap()
}

#[test]
fn a_postgres_dump_streams_in_while_written_and_restores_a_consistent_point_in_time() {
    let pg = Postgres::start();
    let setup = r#"
        create role shop_owner login;
        create database shop owner shop_owner;
        create database audit;
    "#;
    for stmt in setup.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        pg.sql("postgres", stmt);
    }
    pg.sql(
        "shop",
        "create table items (id int primary key, name text, data bytea);
         insert into items select g, 'café ☕ 日本語 ' || g, decode(repeat(md5(g::text), 40), 'hex')
           from generate_series(1, 2000) g;
         create table bulk (id int primary key, payload text);
         insert into bulk select g, repeat(md5(g::text), 8) from generate_series(1, 400000) g;
         select lo_from_bytea(0, decode(repeat(md5('lo'), 65536), 'hex'));
         alter table items owner to shop_owner;",
    );
    pg.sql(
        "audit",
        "create table notes (id int primary key, body text);
         insert into notes select g, 'Grüße ' || g from generate_series(1, 100) g;
         create table events (id bigint primary key, at timestamptz default now());",
    );
    let size: i64 = pg
        .sql("shop", "select pg_database_size('shop')")
        .parse()
        .unwrap();
    assert!(size > 100 << 20, "the database is only {size} bytes");
    let before = fingerprint(&pg);

    // A writer that keeps inserting events 1, 2, 3, ... one transaction each.
    let mut writer = Command::new(pg.tool("psql"))
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "audit", "-c"])
        .arg("do $$ begin for i in 1..100000000 loop insert into events(id) values (i); commit; end loop; end $$")
        .env("PGAPPNAME", "writer")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while pg
        .sql("audit", "select count(*) from events")
        .parse::<i64>()
        .unwrap()
        < 100
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the writer does not write"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let events_before = contiguous_events(&pg);

    let env = Env::new();
    let stash = env.stash();
    stash.ok(&["init"]);
    let dumpall = pg.tool("pg_dumpall");
    let mut args = vec![
        "backup".to_string(),
        "--tag".into(),
        "postgres".into(),
        "--stdin-filename".into(),
        "postgres/all.sql".into(),
        "--stdin-from-command".into(),
        "--".into(),
        dumpall.display().to_string(),
    ];
    args.extend(pg.conn_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    stash.ok(&refs);
    let events_after = contiguous_events(&pg);
    pg.sql(
        "postgres",
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'writer'",
    );
    let _ = writer.wait();
    assert!(
        events_after > events_before,
        "the writer stopped during the dump"
    );

    // restic reads the same dump.
    let dump = {
        let out = stash.run(&["dump", "latest", "/postgres/all.sql"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let theirs =
        env.restic()
            .with_bin(servers::bin("restic"))
            .run(["dump", "latest", "/postgres/all.sql"]);
    assert!(theirs.status.success());
    assert!(theirs.stdout == dump, "restic dumps other bytes");

    // Everything gone.
    for db in ["shop", "audit"] {
        pg.sql("postgres", &format!("drop database {db} with (force)"));
    }
    pg.sql("postgres", "drop role shop_owner");

    // Restore: `stash dump` straight into psql.
    let mut dump_cmd = stash
        .command()
        .args(["dump", "latest", "/postgres/all.sql"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = Command::new(pg.tool("psql"))
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "postgres", "-f", "-"])
        .stdin(dump_cmd.stdout.take().unwrap())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(dump_cmd.wait().unwrap().success());
    let stderr = String::from_utf8_lossy(&restore.stderr);
    // pg_dumpall recreates the role it connects as; that one already exists.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR"))
        .filter(|l| !l.contains(r#"role "postgres" already exists"#))
        .collect();
    assert!(restore.status.success() && errors.is_empty(), "{stderr}");

    assert_eq!(fingerprint(&pg), before);
    // One consistent point in time: events 1..=n without gaps, with n
    // between what was there when the dump started and when it ended.
    let n = contiguous_events(&pg);
    assert!(
        (events_before..=events_after).contains(&n),
        "restored {n} events; the dump ran from {events_before} to {events_after}"
    );
    let _ = std::io::stderr().flush();
}
