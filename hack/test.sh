#!/usr/bin/env bash
# The one test command, for developers and for CI (.ci/run). In order, stopping
# at the first failure:
#   1. hack/install-deps.sh     restic (the test oracle), attr, rustfmt, clippy
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. hack/test-servers.sh     builds (once; cached in ~/.cache/stash-test-bin)
#                               MinIO, rest-server, Azurite, fake-gcs-server,
#                               toxiproxy and a current restic
#   5. hack/envtest.sh          builds (once; cached in ~/.cache/stash-envtest)
#                               kube-apiserver and etcd from source
#   6. hack/crdgen-check.sh     deploy/crds/ must equal what api/ generates
#   7. cargo test --workspace   unit, integration and restic-oracle tests; the
#                               backend tests start those servers themselves,
#                               the Kubernetes tests a real apiserver
# Tests that need restic, a server or the apiserver fail, never skip, when it
# is missing.
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
step bash hack/test-servers.sh build
step bash hack/envtest.sh
step bash hack/crdgen-check.sh
step cargo test --workspace
