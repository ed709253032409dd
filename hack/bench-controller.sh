#!/usr/bin/env bash
# Scale bench of the controller (issue 6, "What must hold" 5): 1 000
# BackupConfigurations and 10 000 pods in a real kube-apiserver (envtest),
# the release stash-controller binary; reports its peak RSS and the time
# from schedule tick to BackupSession (p50/p99/max). Targets: p99 < 1 s,
# RSS < 100 MiB. Takes about two minutes after the build.
#
#   bash hack/bench-controller.sh
#   CONFIGS=200 PODS=2000 WINDOW_SECONDS=30 bash hack/bench-controller.sh
#   BURST=1 bash hack/bench-controller.sh   # all configurations at one second
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/envtest.sh >/dev/null
cargo build --release -q -p stash-controller --bin stash-controller --example bench_controller
exec target/release/examples/bench_controller target/release/stash-controller
