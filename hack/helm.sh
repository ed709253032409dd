#!/usr/bin/env bash
# Provides `helm` for the Helm chart's test (controller/tests/deploy.rs),
# built from source with the Go toolchain and the Go module proxy (no
# prebuilt binary to download), like hack/envtest.sh.
#
#   bash hack/helm.sh          build if missing, print the binary's path
#   bash hack/helm.sh --path   print the path only (no build)
#
# The binary lands in ~/.cache/stash-helm/<version>/helm (or
# $STASH_HELM_DIR/helm). A cold build takes a few minutes on two cores.
set -euo pipefail

HELM_VERSION="${STASH_HELM_VERSION:-v3.22.0}"
dir="${STASH_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-helm/$HELM_VERSION}"
out="$dir/helm"

say() { echo "helm: $*" >&2; }

if [[ "${1:-}" == "--path" ]]; then
    echo "$out"
    exit 0
fi

if [[ -x "$out" ]] && "$out" version --short >/dev/null 2>&1; then
    say "present ($("$out" version --short))"
    echo "$out"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    say "the Go toolchain (go) is needed to build helm $HELM_VERSION; install Go >= 1.26"
    exit 1
}
export GOFLAGS="${GOFLAGS:--p=2} -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

start=$SECONDS
say "$HELM_VERSION: building"
mkdir -p "$dir"
GOBIN="$dir/.bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$dir/.bin/helm" "$out"
rmdir "$dir/.bin" 2>/dev/null || true
say "built in $((SECONDS - start)) s ($("$out" version --short))"
echo "$out"
