#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, see fuzz/README.md) under AFL++ for a
# bounded time each, seeded from fuzz/corpus/<target>/, two at a time:
#
#   hack/fuzz.sh [SECONDS] [TARGET...]      SECONDS per target, default 20
#
# Fails when any target saved a crash or a hang (the inputs are listed,
# under target/fuzz/<target>/default/{crashes,hangs}/; replay one with
# `cargo run -p stash-fuzz -- TARGET FILE` for a backtrace). Prints, per
# target, the time fuzzed, executions, paths found and crashes/hangs.
#
# Needs cargo-afl, installed by hack/install-deps.sh into ~/.cache/stash-fuzz
# (AFL++ is built there too). The instrumented build (every dependency of
# repo-format and stash-api, built again with AFL++'s RUSTFLAGS, which force
# one codegen unit at -O3: 40 minutes cold on the shared 2-core machine, 24
# CPU-minutes) goes to ~/.cache/stash-fuzz/target, shared by
# every checkout, so that only changed crates are rebuilt and the ordinary
# target/ is never invalidated; FUZZ_TARGET_DIR chooses another.
#
# Environment: FUZZ_JOBS (targets at a time, default 2), FUZZ_TIMEOUT_MS
# (an input running longer is a hang, default 1000), FUZZ_MEMORY_MB (the
# address-space limit of the target: an input needing more crashes it,
# default 2048).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-20}
shift || true
jobs=${FUZZ_JOBS:-2}
timeout_ms=${FUZZ_TIMEOUT_MS:-1000}
memory_mb=${FUZZ_MEMORY_MB:-2048}

export PATH="$HOME/.cache/stash-fuzz/bin:$PATH"
export XDG_DATA_HOME="$HOME/.cache/stash-fuzz/share"
if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz: cargo-afl is missing: run hack/install-deps.sh" >&2
    exit 1
fi

say() { echo "fuzz: $*"; }

target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/stash-fuzz/target}
say "building the instrumented targets ($target_dir)"
cargo afl build -p stash-fuzz --features afl --target-dir "$target_dir"
bin=$target_dir/debug/stash-fuzz

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(ls fuzz/corpus)
fi

out=target/fuzz
# AFL++ refuses to start when core dumps go to a helper or the CPU governor
# may scale down (neither changes what it finds); AFL_NO_AFFINITY because
# the machine is shared; each run starts fresh from the committed seeds.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_NO_AFFINITY=1 AFL_QUIET=1

run() {
    local t=$1
    rm -rf "${out:?}/$t"
    mkdir -p "$out/$t"
    if cargo afl fuzz -i "fuzz/corpus/$t" -o "$out/$t" -V "$seconds" \
        -t "$timeout_ms" -m "$memory_mb" -- "$bin" "$t" >"$out/$t.log" 2>&1; then
        :
    else
        echo "afl-fuzz exited with $?" >>"$out/$t.log"
    fi
}

mkdir -p "$out"
running=0
for t in "${targets[@]}"; do
    [[ -d fuzz/corpus/$t ]] || { say "no target $t (no fuzz/corpus/$t)" >&2; exit 1; }
    run "$t" &
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
    fi
done
wait

stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$out/$2/default/fuzzer_stats" 2>/dev/null; }

failed=0
printf '%-12s %8s %12s %10s %8s %8s %6s\n' target seconds execs execs/s corpus crashes hangs
for t in "${targets[@]}"; do
    if [[ ! -f $out/$t/default/fuzzer_stats ]]; then
        say "$t did not run:"
        tail -20 "$out/$t.log" >&2
        failed=1
        continue
    fi
    crashes=$(stat saved_crashes "$t")
    hangs=$(stat saved_hangs "$t")
    printf '%-12s %8s %12s %10s %8s %8s %6s\n' "$t" "$(stat run_time "$t")" \
        "$(stat execs_done "$t")" "$(stat execs_per_sec "$t")" "$(stat corpus_count "$t")" \
        "$crashes" "$hangs"
    if ((crashes > 0 || hangs > 0)); then
        failed=1
        for f in "$out/$t"/default/{crashes,hangs}/id*; do
            [[ -e $f ]] && say "$t: $f"
        done
    fi
done
if ((failed)); then
    say "FAILED: a target crashed, hung or did not run (see above)"
    exit 1
fi
say "no crashes, no hangs"
