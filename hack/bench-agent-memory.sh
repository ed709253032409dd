#!/usr/bin/env bash
# Memory of the node agent in a large cluster (issue 14, failure 6): 10 000
# pods on 100 nodes and 1 000 unfinished BackupSessions (one item per pod)
# in a real kube-apiserver (envtest), the controller in-process, and one
# agent per given binary, side by side, each the agent of its own node with
# real volumes to back up into a local repository. Reports each agent's peak
# RSS while busy and its RSS when idle afterwards. Target: idle <= 64 MiB.
#
#   bash hack/bench-agent-memory.sh                  # this tree's release stash
#   bash hack/bench-agent-memory.sh /path/to/old/stash   # ... beside another build
#   PROFILE=debug PODS=2000 SESSIONS=200 bash hack/bench-agent-memory.sh
#   (also NODES, NAMESPACES, VOLUME_KIB, IDLE_SECONDS)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/envtest.sh >/dev/null
profile=${PROFILE:-release}
flag=--release
[ "$profile" = debug ] && flag=
cargo build $flag -q -p stash-agent --bin stash --example bench_agent_memory
exec "target/$profile/examples/bench_agent_memory" "target/$profile/stash" "$@"
