#!/usr/bin/env bash
# Provides a real kube-apiserver and etcd for tests, the way controller-runtime's
# envtest does, but built here from source with the Go toolchain and the Go
# module proxy (no prebuilt binaries to download):
#
#   kube-apiserver  from k8s.io/kubernetes at $STASH_ENVTEST_K8S_VERSION,
#                   in one `go build` with kubelet, kube-controller-manager,
#                   kube-scheduler, kube-proxy and kubectl (the real test
#                   node's; see build_kubernetes)
#   etcd            from go.etcd.io/etcd/server/v3 at the version that
#                   Kubernetes release pins in its own go.mod
#
# Both land in ~/.cache/stash-envtest/<k8s version>/ (or $STASH_ENVTEST_DIR),
# which the Rust helper `stash_testkit::envtest` reads. Idempotent: a binary
# that is present and answers --version is not rebuilt.
#
#   bash hack/envtest.sh          build what is missing, print the directory
#   bash hack/envtest.sh --path   print the directory only (no build)
#
# A cold build takes about 11 minutes on two cores (etcd ~1 min, then
# kube-apiserver ~10 min, mostly module downloads and compiling); after that
# the binaries are found and nothing is built. Set GOFLAGS (default -p=2) to trade speed against the other work on
# the machine.
set -euo pipefail

K8S_VERSION="${STASH_ENVTEST_K8S_VERSION:-1.36.3}"
dir="${STASH_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-envtest/$K8S_VERSION}"

say() { echo "envtest: $*" >&2; }

if [[ "${1:-}" == "--path" ]]; then
    echo "$dir"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    say "the Go toolchain (go) is needed to build kube-apiserver and etcd; install Go >= 1.26"
    exit 1
}

export GOFLAGS="${GOFLAGS:--p=2}"
# Never download another toolchain: the one installed builds Kubernetes.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

mkdir -p "$dir"
work="$dir/.build"
mkdir -p "$work"

# The staging version of k8s.io/kubernetes vX.Y.Z is v0.Y.Z.
staging_version="v0.${K8S_VERSION#*.}"

k8s_gomod() {
    # Path of k8s.io/kubernetes's go.mod in the module cache (downloads it).
    go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p'
}

# The Kubernetes binaries, all from k8s.io/kubernetes at $K8S_VERSION and all
# in one `go build`, so they share one compile of the packages they have in
# common (a separate kubelet build after the apiserver's would compile most of
# Kubernetes again): kube-apiserver for every Kubernetes test; kubelet,
# kube-controller-manager, kube-scheduler, kube-proxy and kubectl for the
# real node (stash_envtest::cluster; hack/node.sh builds the rest of it).
K8S_COMMANDS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl)

build_kubernetes() {
    local missing=() c
    for c in "${K8S_COMMANDS[@]}"; do
        if [[ -x "$dir/$c" ]] && "$dir/$c" --version >/dev/null 2>&1; then
            say "$c: present"
        else
            missing+=("$c")
        fi
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    local start=$SECONDS mod="$work/kubernetes" gomod pkgs=()
    say "${missing[*]} v$K8S_VERSION: building (cold builds take long; be patient)"
    rm -rf "$mod"
    mkdir -p "$mod/bin"
    gomod="$(k8s_gomod)"
    [[ -f "$gomod" ]] || { say "could not download k8s.io/kubernetes@v$K8S_VERSION"; exit 1; }
    {
        echo "module stash.rs/envtest/kubernetes"
        echo
        echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
        echo
        echo "require k8s.io/kubernetes v$K8S_VERSION"
        echo
        # k8s.io/kubernetes replaces its staging modules with ./staging/...,
        # which a dependent module does not see; pin each to its published
        # release instead.
        echo "replace ("
        grep -E '^[[:space:]]*k8s\.io/[^ ]+ => \./staging/' "$gomod" |
            awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
        echo ")"
    } >"$mod/go.mod"
    {
        printf '//go:build tools\n\npackage tools\n\nimport (\n'
        for c in "${missing[@]}"; do
            printf '\t_ "%s"\n' "$(k8s_pkg "$c")"
            pkgs+=("$(k8s_pkg "$c")")
        done
        printf ')\n'
    } >"$mod/tools.go"
    local minor="${K8S_VERSION#*.}"
    minor="${minor%%.*}"
    local pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    (
        cd "$mod"
        go mod tidy
        # Several main packages and -o a directory: one binary each.
        go build -trimpath -ldflags "$ldflags" -o bin/ "${pkgs[@]}"
    )
    for c in "${missing[@]}"; do
        mv "$mod/bin/$c" "$dir/$c"
    done
    say "${missing[*]}: built in $((SECONDS - start)) s ($("$dir/kube-apiserver" --version))"
}

k8s_pkg() {
    case "$1" in
    kubectl) echo k8s.io/kubernetes/cmd/kubectl ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
    esac
}

build_etcd() {
    local out="$dir/etcd"
    if [[ -x "$out" ]] && "$out" --version >/dev/null 2>&1; then
        say "etcd: present ($("$out" --version | head -n1))"
        return
    fi
    local start=$SECONDS mod="$work/etcd" gomod etcd_version
    gomod="$(k8s_gomod)"
    # The etcd this Kubernetes release is tested with.
    etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$gomod")"
    [[ -n "$etcd_version" ]] || { say "no go.etcd.io/etcd/server/v3 in $gomod"; exit 1; }
    say "etcd $etcd_version: building"
    rm -rf "$mod"
    mkdir -p "$mod"
    {
        echo "module stash.rs/envtest/etcd"
        echo
        echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')"
        echo
        echo "require go.etcd.io/etcd/server/v3 $etcd_version"
    } >"$mod/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$mod/tools.go"
    (
        cd "$mod"
        go mod tidy
        go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3
    )
    mv "$out.tmp" "$out"
    say "etcd: built in $((SECONDS - start)) s ($("$out" --version | head -n1))"
}

build_etcd
build_kubernetes
echo "$dir"
