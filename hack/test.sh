#!/usr/bin/env bash
# The one test command, for developers and for CI (.ci/run). In order, stopping
# at the first failure:
#   1. hack/install-deps.sh     restic (the test oracle), attr, rustfmt, clippy,
#                               cargo-afl (cached in ~/.cache/stash-fuzz)
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#      hack/import-cycles.py     no two files of a crate import each other
#   4. hack/test-servers.sh     builds (once; cached in ~/.cache/stash-test-bin)
#                               MinIO, rest-server, Azurite, fake-gcs-server,
#                               toxiproxy, a current restic, and prometheus
#                               with promtool (deploy/monitoring/'s tests)
#   5. hack/envtest.sh          builds (once; cached in ~/.cache/stash-envtest)
#                               etcd, and kube-apiserver with the kubelet,
#                               kube-controller-manager, kube-scheduler,
#                               kube-proxy and kubectl, from source
#      hack/node.sh             builds (once; cached in ~/.cache/stash-node)
#                               containerd, runc and the CNI plugins for the
#                               real test node (tests/e2e_node)
#      hack/helm.sh             builds (once; cached in ~/.cache/stash-helm)
#                               helm, for the chart's test
#   6. hack/crdgen-check.sh     deploy/crds/ must equal what api/ generates
#      hack/fuzz.sh 20          every fuzz target (fuzz/) under AFL++ for 20 s,
#                               two at a time; fails on a crash or hang
#   7. cargo build -p stash-controller --bin stash-controller (the
#      controller image of the real-node test is made from it), then
#      cargo test --workspace   unit, integration and restic-oracle tests; the
#                               backend tests start those servers themselves,
#                               the Kubernetes tests a real apiserver, the
#                               e2e_node test a real node (needs root)
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
step python3 hack/import-cycles.py
step bash hack/test-servers.sh build
step bash hack/envtest.sh
step bash hack/node.sh
step bash hack/helm.sh
step bash hack/crdgen-check.sh
step bash hack/fuzz.sh 20
step cargo build -p stash-controller --bin stash-controller
echo
echo "==> cargo test --workspace"
log="$(mktemp -t stash-test-XXXXXX.log)"
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: cargo's own last line is a doc-test
# summary that usually says "0 passed".
passed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s += $6} END {print s + 0}')
rm -f "$log"
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
