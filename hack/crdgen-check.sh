#!/usr/bin/env bash
# Fails when deploy/crds/ differs from what the Rust types in api/ generate:
# the checked-in CRDs can never drift from the code. To update them:
#   cargo run -p stash-api --bin crdgen
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cargo run -q -p stash-api --bin crdgen -- "$tmp" >/dev/null
if ! diff -ru deploy/crds "$tmp"; then
    echo "crdgen-check: deploy/crds/ is stale; run: cargo run -p stash-api --bin crdgen" >&2
    exit 1
fi
echo "crdgen-check: deploy/crds/ matches the Rust types"
