#!/usr/bin/env bash
# Builds the real servers the storage-backend tests run against, and a
# current restic next to Debian's, at the versions in
# hack/test-servers.versions:
#   minio            S3                      (Go module proxy)
#   rest-server      restic's REST server    (Go module proxy)
#   restic           current restic release  (Go module proxy)
#   toxiproxy-server fault injection         (Go module proxy)
#   fake-gcs-server  Google Cloud Storage    (Go module proxy)
#   azurite-blob     Azure Blob Storage      (npm)
#
# Each goes into ~/.cache/stash-test-bin/<name>-<version>/ (or
# $STASH_TEST_BIN/<name>-<version>/) and is built only when missing, so a
# fresh machine builds everything once and later runs take seconds. A build
# happens in a temporary directory that is renamed into place when complete:
# an interrupted build leaves nothing a test would mistake for a binary.
#
# The tests do not build anything themselves; they start these binaries on
# loopback ports chosen at run time and fail, naming this script, when one
# is missing. hack/test.sh runs `hack/test-servers.sh build` before
# `cargo test`.
#
# Usage:
#   hack/test-servers.sh [build] [NAME...]   build what is missing (all by default)
#   hack/test-servers.sh path NAME           print the binary's path (built or not)
#   hack/test-servers.sh list                print name, version, path, present?
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "test-servers: $*" >&2; }

cache=${STASH_TEST_BIN:-$HOME/.cache/stash-test-bin}

declare -A version=()
names=()
while IFS='=' read -r name ver; do
    [[ -z $name || $name == \#* ]] && continue
    version[$name]=$ver
    names+=("$name")
done <hack/test-servers.versions

# name -> the Go package (main) to build.
declare -A go_package=(
    [minio]=github.com/minio/minio
    [rest-server]=github.com/restic/rest-server/cmd/rest-server
    [restic]=github.com/restic/restic/cmd/restic
    [toxiproxy]=github.com/Shopify/toxiproxy/v2/cmd/server
    [fake-gcs-server]=github.com/fsouza/fake-gcs-server
    # Two binaries of one module in one `go build` (relative to the module):
    # the rules' tests run promtool, the scrape test prometheus.
    [prometheus]="./cmd/prometheus ./cmd/promtool"
)
# name -> the Go module holding it.
declare -A go_module=(
    [minio]=github.com/minio/minio
    [rest-server]=github.com/restic/rest-server
    [restic]=github.com/restic/restic
    [toxiproxy]=github.com/Shopify/toxiproxy/v2
    [fake-gcs-server]=github.com/fsouza/fake-gcs-server
    [prometheus]=github.com/prometheus/prometheus
)
# name -> the executable's name inside its directory.
declare -A binary=(
    [minio]=minio
    [rest-server]=rest-server
    [restic]=restic
    [toxiproxy]=toxiproxy-server
    [fake-gcs-server]=fake-gcs-server
    [azurite]=azurite-blob
    [prometheus]=prometheus
)

dir_of() { echo "$cache/$1-${version[$1]}"; }
path_of() { echo "$(dir_of "$1")/${binary[$1]}"; }

check_name() {
    if [[ -z ${version[$1]:-} ]]; then
        say "unknown name $1 (known: ${names[*]})"
        exit 2
    fi
}

build_one() {
    local name=$1 dir tmp start
    dir=$(dir_of "$name")
    if [[ -x $(path_of "$name") ]]; then
        say "$name ${version[$name]}: present ($(path_of "$name"))"
        return
    fi
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.build-$name.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    start=$SECONDS
    if [[ $name == azurite ]]; then
        command -v npm >/dev/null || { say "npm is needed to install Azurite"; exit 1; }
        say "$name ${version[$name]}: npm install"
        npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error \
            "azurite@${version[$name]}" >&2
        ln -s node_modules/.bin/azurite-blob "$tmp/azurite-blob"
    else
        command -v go >/dev/null || { say "the Go toolchain is needed to build $name"; exit 1; }
        # Not `go install pkg@version`: that also asks the proxy for the
        # module's version list (to look for deprecations), which the proxy
        # here refuses for some modules. Downloading the one version and
        # building inside it needs only that version and its go.sum.
        local module=${go_module[$name]} src
        say "$name ${version[$name]}: go mod download $module@${version[$name]}, go build ${go_package[$name]}"
        src=$(go mod download -json "$module@${version[$name]}" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
        [[ -d $src ]] || { say "$name: go mod download gave no directory"; exit 1; }
        if [[ $name == prometheus ]]; then
            # Its go.work names modules the release archive leaves out; the
            # web UI's assets are not embedded (the API is all we use).
            # shellcheck disable=SC2086
            (cd "$src" && GOWORK=off CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
                go build -trimpath -ldflags=-s -o "$tmp/" ${go_package[$name]})
        else
            (cd "$src" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
                go build -trimpath -ldflags=-s -o "$tmp/${binary[$name]}" "${go_package[$name]}")
        fi
    fi
    [[ -x $tmp/${binary[$name]} ]] || { say "$name: build produced no ${binary[$name]}"; exit 1; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - RETURN
    say "$name ${version[$name]}: built in $((SECONDS - start)) s ($(path_of "$name"))"
}

cmd=${1:-build}
case $cmd in
build)
    shift || true
    (($# > 0)) || set -- "${names[@]}"
    for n in "$@"; do check_name "$n"; done
    for n in "$@"; do build_one "$n"; done
    ;;
path)
    check_name "${2:?usage: $0 path NAME}"
    path_of "$2"
    ;;
list)
    for n in "${names[@]}"; do
        p=$(path_of "$n")
        printf '%-16s %-40s %s %s\n' "$n" "${version[$n]}" "$p" "$([[ -x $p ]] && echo present || echo MISSING)"
    done
    ;;
*)
    # Plain names build those.
    for n in "$@"; do check_name "$n"; done
    for n in "$@"; do build_one "$n"; done
    ;;
esac
