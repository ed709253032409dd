#!/usr/bin/env bash
# Builds, from their Go modules with the Go toolchain here, what a real
# Kubernetes node needs besides the kubelet (which hack/envtest.sh builds
# together with kube-apiserver, so they share one compile):
#
#   containerd, containerd-shim-runc-v2, ctr   github.com/containerd/containerd/v2
#   runc (seccomp tag: the kubelet always asks for RuntimeDefault)
#                                              github.com/opencontainers/runc
#   bridge, host-local, loopback (CNI)         github.com/containernetworking/plugins
#
# Each is built inside its own module (the module cache's copy, with the
# module's own go.sum: the versions its authors tested). Everything lands in
# ~/.cache/stash-node/<versions>/ (or $STASH_NODE_DIR), which
# `stash_envtest::cluster` reads. Idempotent: present binaries are not rebuilt.
#
#   bash hack/node.sh          build what is missing, print the directory
#   bash hack/node.sh --path   print the directory only (no build)
#
# runc links libseccomp (Debian's libseccomp-dev, installed by
# hack/install-deps.sh). Cold build on two cores: see deploy/README.md
# ("Tests on a real node") for measured times.
set -euo pipefail

CONTAINERD_VERSION="${STASH_NODE_CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${STASH_NODE_RUNC_VERSION:-v1.5.3}"
CNI_VERSION="${STASH_NODE_CNI_VERSION:-v1.10.0}"
dir="${STASH_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-node/containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_VERSION}"

say() { echo "node: $*" >&2; }

if [[ "${1:-}" == "--path" ]]; then
    echo "$dir"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    say "the Go toolchain (go) is needed to build containerd, runc and the CNI plugins; install Go >= 1.26"
    exit 1
}

export GOFLAGS="${GOFLAGS:--p=2}"
export GOTOOLCHAIN=local
mkdir -p "$dir"

# The module's source directory in the module cache (downloads it).
module_dir() {
    go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p'
}

present() {
    local b
    for b in "$@"; do
        [[ -x "$dir/$b" ]] || return 1
    done
}

build_containerd() {
    if present containerd containerd-shim-runc-v2 ctr; then
        say "containerd $CONTAINERD_VERSION: present"
        return
    fi
    local start=$SECONDS src pkg=github.com/containerd/containerd/v2
    say "containerd $CONTAINERD_VERSION: building"
    src="$(module_dir "$pkg@$CONTAINERD_VERSION")"
    local ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Revision=module"
    (
        cd "$src"
        # Static, without the btrfs snapshotter (it needs cgo and btrfs
        # headers; overlayfs and native are what the node uses).
        CGO_ENABLED=0 go build -trimpath -tags "no_btrfs" -ldflags "$ldflags" \
            -o "$dir/" ./cmd/containerd ./cmd/containerd-shim-runc-v2 ./cmd/ctr
    )
    say "containerd: built in $((SECONDS - start)) s"
}

build_runc() {
    if present runc && "$dir/runc" --version | grep -q seccomp; then
        say "runc $RUNC_VERSION: present"
        return
    fi
    local start=$SECONDS src
    pkg-config --exists libseccomp 2>/dev/null || {
        say "runc needs libseccomp's headers: apt-get install libseccomp-dev (hack/install-deps.sh)"
        exit 1
    }
    say "runc $RUNC_VERSION: building (seccomp)"
    src="$(module_dir "github.com/opencontainers/runc@$RUNC_VERSION")"
    (
        cd "$src"
        # cgo: runc's nsexec is C, and seccomp links libseccomp.
        CGO_ENABLED=1 go build -trimpath -tags "seccomp" \
            -ldflags "-s -w -X main.version=${RUNC_VERSION#v} -X main.gitCommit=module" \
            -o "$dir/runc.tmp" .
    )
    mv "$dir/runc.tmp" "$dir/runc"
    say "runc: built in $((SECONDS - start)) s ($("$dir/runc" --version | tr '\n' ' '))"
}

build_cni() {
    if present cni/bridge cni/host-local cni/loopback; then
        say "CNI plugins $CNI_VERSION: present"
        return
    fi
    local start=$SECONDS src
    say "CNI plugins $CNI_VERSION: building"
    src="$(module_dir "github.com/containernetworking/plugins@$CNI_VERSION")"
    mkdir -p "$dir/cni"
    (
        cd "$src"
        CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/cni/" \
            ./plugins/main/bridge ./plugins/ipam/host-local ./plugins/main/loopback
    )
    say "CNI plugins: built in $((SECONDS - start)) s"
}

build_cni
build_runc
build_containerd
echo "$dir"
