#!/usr/bin/env bash
# The one test command, for developers and for CI (.ci/run). In order, stopping
# at the first failure:
#   1. hack/install-deps.sh     restic (the test oracle), attr, rustfmt, clippy
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo test --workspace   unit, integration and restic-oracle tests
# Tests that need restic fail, never skip, when it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    echo
    echo "==> $*"
    "$@"
}

step bash hack/install-deps.sh
step cargo fmt --all --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo test --workspace
