#!/usr/bin/env bash
# Benchmark: stash against restic on the same deterministic corpus, in one run.
#
#   bash hack/bench.sh              # ~1 GiB corpus, 2 runs per tool (a few minutes on 2 cores)
#   SIZE_MB=4096 RUNS=3 bash hack/bench.sh
#
# Phases, each timed with /usr/bin/time -v (wall, CPU, peak RSS), warm cache:
#   backup-first, backup-nochange, backup-5pct (5 % of files changed),
#   restore (full), check-read-data; then, against one MinIO server (built
#   by hack/test-servers.sh; S3=0 to skip), s3-backup and s3-restore; then
#   prune (PRUNE=0 to skip): restic 0.14 makes one repository of the corpus
#   with about 30 % garbage (a backup, ~30 % of the bytes deleted, a second
#   backup, the first forgotten), and each tool prunes its own identical
#   copy with the default --max-unused 5 %; restic 0.14 checks every result.
#   MAIN=0 skips the local backup/restore/check phases.
#   Then (DB=0 to skip) db-backup: a PostgreSQL database of DB_MB MiB
#   (default 1024; Debian's server, started here as the postgres user)
#   dumped with pg_dump through `backup --stdin-from-command` by stash and
#   the current restic, beside `pg_dump > /dev/null` (tool pg_dump) as the
#   bound: the ratio-pg_dump row is stash's wall time over pg_dump's alone.
# Each run uses a fresh copy of the corpus and a fresh repository per tool.
# Prints a table with the stash/restic ratio per phase.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

SIZE_MB="${SIZE_MB:-1024}"
RUNS="${RUNS:-2}"
BENCH_DIR="${BENCH_DIR:-${TMPDIR:-/tmp}/stash-bench}"
RESTIC="${RESTIC:-restic}"
# A current restic as well, when one is built (hack/test-servers.sh builds
# it into ~/.cache/stash-test-bin); RESTIC_CURRENT= (empty) to skip it.
if [[ -z "${RESTIC_CURRENT+x}" ]]; then
    RESTIC_CURRENT="$(ls -d "$HOME"/.cache/stash-test-bin/restic-v*/restic 2>/dev/null | sort -V | tail -1 || true)"
fi
TOOLS=(stash restic)
[[ -n "$RESTIC_CURRENT" && -x "$RESTIC_CURRENT" ]] && TOOLS+=(restic-current)

need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get install -y -q "$2" >/dev/null; }; }
bash hack/install-deps.sh >/dev/null
[[ -x /usr/bin/time ]] || { apt-get update -q >/dev/null; apt-get install -y -q time >/dev/null; }
need python3 python3
need curl curl

echo "==> building stash (release)"
cargo build --release -q -p stash-agent
STASH="$ROOT/target/release/stash"

mkdir -p "$BENCH_DIR"
CORPUS="$BENCH_DIR/corpus-$SIZE_MB"
# (The database phase alone needs no corpus.)
if [[ ! -f "$CORPUS/.complete" && "${MAIN:-1}${S3:-1}${PRUNE:-1}" != 000 ]]; then
    echo "==> generating a $SIZE_MB MiB corpus in $CORPUS"
    rm -rf "$CORPUS"
    python3 hack/bench/corpus.py "$CORPUS" "$SIZE_MB"
    touch "$CORPUS/.complete"
fi
CORPUS_BYTES=$(du -sb --exclude=.complete "$CORPUS" 2>/dev/null | cut -f1 || echo 0)
RESULTS="$BENCH_DIR/results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
PW="$BENCH_DIR/password"
echo "benchmark password" > "$PW"

echo "stash:  $("$STASH" --version)"
echo "restic: $("$RESTIC" version)"
[[ " ${TOOLS[*]} " == *" restic-current "* ]] && echo "restic-current: $("$RESTIC_CURRENT" version)"

# tool_cmd TOOL REPO WORKDIR: sets T to the tool's command line for REPO.
tool_cmd() {
    case $1 in
        stash) T=("$STASH" -r "$2" --password-file "$PW") ;;
        restic) T=("$RESTIC" -r "$2" --password-file "$PW" --cache-dir "$3/cache") ;;
        restic-current) T=("$RESTIC_CURRENT" -r "$2" --password-file "$PW" --cache-dir "$3/cache") ;;
    esac
}

# fresh_copy WORKDIR: a new work directory holding a copy of the corpus.
fresh_copy() {
    rm -rf "$1"
    mkdir -p "$1"
    cp -a "$CORPUS" "$1/data"
    rm -f "$1/data/.complete"
}

timed() { # tool phase run cmd...
    local out="$RESULTS/$1.$2.run$3"
    shift 3
    /usr/bin/time -v -o "$out.time" "$@" >"$out.log" 2>&1 || {
        echo "FAILED: $* (see $out.log)" >&2
        tail -5 "$out.log" >&2
        exit 1
    }
}

for run in $(seq 1 "$RUNS"); do
    [[ "${MAIN:-1}" == 1 ]] || break
    for tool in "${TOOLS[@]}"; do
        W="$BENCH_DIR/work-$tool"
        fresh_copy "$W"
        tool_cmd $tool "$W/repo" "$W"
        echo "==> run $run: $tool"
        "${T[@]}" init >/dev/null
        # Warm the page cache for the source, so both tools start alike.
        find "$W/data" -type f -exec cat {} + >/dev/null
        timed $tool backup-first "$run" "${T[@]}" backup "$W/data"
        timed $tool backup-nochange "$run" "${T[@]}" backup "$W/data"
        python3 hack/bench/corpus.py --modify "$W/data" 5 "$run" >/dev/null
        timed $tool backup-5pct "$run" "${T[@]}" backup "$W/data"
        timed $tool restore "$run" "${T[@]}" restore latest --target "$W/restore"
        diff -rq "$W/data" "$W/restore$W/data" >/dev/null || { echo "$tool restore differs from the source" >&2; exit 1; }
        timed $tool check-read-data "$run" "${T[@]}" check --read-data
        rm -rf "$W/restore"
    done
done

if [[ "${S3:-1}" == 1 ]]; then
    bash hack/test-servers.sh build >/dev/null
    MINIO="$(ls -d "$HOME"/.cache/stash-test-bin/minio-*/minio | sort -V | tail -1)"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    CONSOLE=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rm -rf "$BENCH_DIR/minio"
    mkdir -p "$BENCH_DIR/minio"
    MINIO_ROOT_USER=bench MINIO_ROOT_PASSWORD=bench-secret-key MINIO_BROWSER=off MINIO_UPDATE=off HOME="$BENCH_DIR/minio" \
        "$MINIO" server --quiet --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$CONSOLE" "$BENCH_DIR/minio/data" \
        >"$BENCH_DIR/minio.log" 2>&1 &
    MINIO_PID=$!
    trap 'kill $MINIO_PID 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$PORT/minio/health/ready" >/dev/null && break
        sleep 0.5
    done
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_DEFAULT_REGION=us-east-1
    for run in $(seq 1 "$RUNS"); do
        for tool in "${TOOLS[@]}"; do
            W="$BENCH_DIR/work-$tool"
            fresh_copy "$W"
            tool_cmd $tool "s3:http://127.0.0.1:$PORT/bench/$tool-$run" "$W"
            echo "==> run $run: $tool against MinIO"
            "${T[@]}" init >/dev/null
            timed $tool s3-backup "$run" "${T[@]}" backup "$W/data"
            timed $tool s3-restore "$run" "${T[@]}" restore latest --target "$W/restore"
            diff -rq "$W/data" "$W/restore$W/data" >/dev/null || { echo "$tool S3 restore differs from the source" >&2; exit 1; }
            rm -rf "$W/restore"
        done
    done
    kill $MINIO_PID 2>/dev/null || true
fi

if [[ "${PRUNE:-1}" == 1 ]]; then
    G="$BENCH_DIR/prune-template"
    if [[ ! -f "$G/.complete" ]]; then
        echo "==> making a repository with about 30 % garbage (restic 0.14)"
        rm -rf "$G"
        mkdir -p "$G"
        fresh_copy "$G/src"
        "$RESTIC" -r "$G/repo" --password-file "$PW" --cache-dir "$G/cache" init >/dev/null
        "$RESTIC" -r "$G/repo" --password-file "$PW" --cache-dir "$G/cache" backup "$G/src/data" >/dev/null
        python3 hack/bench/corpus.py --remove "$G/src/data" 30 7 >/dev/null
        "$RESTIC" -r "$G/repo" --password-file "$PW" --cache-dir "$G/cache" backup "$G/src/data" >/dev/null
        "$RESTIC" -r "$G/repo" --password-file "$PW" --cache-dir "$G/cache" forget --keep-last 1 >/dev/null
        rm -rf "$G/src" "$G/cache"
        touch "$G/.complete"
    fi
    for run in $(seq 1 "$RUNS"); do
        for tool in "${TOOLS[@]}"; do
            W="$BENCH_DIR/work-$tool"
            rm -rf "$W"
            mkdir -p "$W"
            cp -a "$G/repo" "$W/repo"
            sync
            tool_cmd $tool "$W/repo" "$W"
            echo "==> run $run: $tool prune"
            before=$(du -sb "$W/repo/data" | cut -f1)
            timed $tool prune "$run" "${T[@]}" prune
            after=$(du -sb "$W/repo/data" | cut -f1)
            echo "    packs: $before -> $after bytes"
            "$RESTIC" -r "$W/repo" --password-file "$PW" --cache-dir "$W/cache" check >/dev/null 2>&1 \
                || { echo "restic check failed after $tool prune" >&2; exit 1; }
        done
    done
fi

if [[ "${DB:-1}" == 1 ]]; then
    DB_MB="${DB_MB:-1024}"
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    PG="$BENCH_DIR/pg"
    as_pg=()
    [[ $(id -u) -eq 0 ]] && as_pg=(runuser -u postgres --)
    PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    if [[ ! -f "$PG/.complete-$DB_MB" ]]; then
        echo "==> making a $DB_MB MiB PostgreSQL database"
        rm -rf "$PG"
        mkdir -p "$PG"
        [[ $(id -u) -eq 0 ]] && chown postgres: "$PG"
        "${as_pg[@]}" "$PGBIN/initdb" --auth=trust -U postgres --locale=C -E UTF8 -D "$PG/data" >/dev/null
    fi
    "${as_pg[@]}" "$PGBIN/postgres" -D "$PG/data" -p "$PGPORT" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$PG" -c fsync=off -c max_wal_size=4GB >"$BENCH_DIR/pg.log" 2>&1 &
    PG_PID=$!
    stop_pg() { "${as_pg[@]}" "$PGBIN/pg_ctl" stop -D "$PG/data" -m fast >/dev/null 2>&1 || true; }
    trap 'stop_pg; kill ${MINIO_PID:-} 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        "$PGBIN/pg_isready" -h "$PG" -p "$PGPORT" -q && break
        sleep 0.5
    done
    PGC=(-h "$PG" -p "$PGPORT" -U postgres)
    if [[ ! -f "$PG/.complete-$DB_MB" ]]; then
        # ~300 bytes a row: text that compresses about as dumps do, and a
        # random part that does not.
        rows=$((DB_MB * 1024 * 1024 / 300))
        "$PGBIN/psql" "${PGC[@]}" -X -q -v ON_ERROR_STOP=1 -d postgres -c "create database bench" \
            -c "\\c bench" -c "select setseed(0.42)" \
            -c "create table orders (id bigint, customer text, note text, blob bytea)" \
            -c "insert into orders select g, 'customer ' || (g % 10007), repeat('order note ' || (g % 97) || ' ', 12), decode(md5(random()::text) || md5(random()::text), 'hex') from generate_series(1, $rows) g" >/dev/null
        touch "$PG/.complete-$DB_MB"
    fi
    DUMP=("$PGBIN/pg_dump" "${PGC[@]}" -d bench)
    DUMP_BYTES=$("${DUMP[@]}" | wc -c)
    echo "db-backup $DUMP_BYTES" >>"$RESULTS/sizes"
    for run in $(seq 1 "$RUNS"); do
        echo "==> run $run: pg_dump > /dev/null"
        timed pg_dump db-backup "$run" bash -c '"$@" >/dev/null' dump "${DUMP[@]}"
        for tool in stash restic-current; do
            [[ " ${TOOLS[*]} " == *" $tool "* ]] || continue
            W="$BENCH_DIR/work-$tool"
            rm -rf "$W"
            mkdir -p "$W"
            tool_cmd $tool "$W/repo" "$W"
            "${T[@]}" init >/dev/null
            echo "==> run $run: $tool backup --stdin-from-command -- pg_dump"
            timed $tool db-backup "$run" "${T[@]}" backup --stdin-filename bench.sql --stdin-from-command -- "${DUMP[@]}"
            got=$("${T[@]}" dump latest /bench.sql | wc -c)
            [[ "$got" == "$DUMP_BYTES" ]] || { echo "$tool: the dump in the repository has $got bytes, pg_dump wrote $DUMP_BYTES" >&2; exit 1; }
        done
    done
    stop_pg
    wait $PG_PID 2>/dev/null || true
fi

python3 hack/bench/report.py "$RESULTS" "$CORPUS_BYTES" | tee "$BENCH_DIR/report.txt"
echo
echo "raw results: $RESULTS; report: $BENCH_DIR/report.txt"
