#!/usr/bin/env bash
# Writes OCI image archives for the test node, without Docker and without a
# registry, from what is built or installed on this machine:
#
#   registry.k8s.io/pause:3.10.2   the Kubernetes pause program, compiled from
#                                  build/pause/linux/pause.c of the
#                                  k8s.io/kubernetes module (static, gcc)
#   stash-test/busybox:1           Debian's busybox-static, for test workloads
#   stash-agent:0.1.0              the cargo-built `stash`, as Dockerfile.agent
#   stash-controller:0.1.0         the cargo-built `stash-controller`, as
#                                  Dockerfile.controller
#
#   bash hack/images.sh OUT_DIR STASH_BIN STASH_CONTROLLER_BIN
#
# writes OUT_DIR/<name>.tar, each one image in OCI layout with the
# `io.containerd.image.name` annotation, for `ctr -n k8s.io images import`.
#
# The agent and controller images are equivalent to the Dockerfiles' (see
# deploy/README.md, "Images for the test node"): the same binary at
# /usr/local/bin, the same entrypoint and command, the same user (root for
# the agent, 65532:65532 for the controller), CA certificates at
# /etc/ssl/certs/ca-certificates.crt. The base differs: instead of
# debian:bookworm-slim / distroless cc, the image holds exactly the shared
# libraries `ldd` lists for the binary (glibc from this Debian, the same
# release the Dockerfiles' bases come from). Binaries are stripped of debug
# info (objcopy --strip-debug) to keep the archives small.
set -euo pipefail

say() { echo "images: $*" >&2; }

[[ $# -eq 3 ]] || { say "usage: $0 OUT_DIR STASH_BIN STASH_CONTROLLER_BIN"; exit 2; }
out="$1" agent_bin="$2" controller_bin="$3"
for b in "$agent_bin" "$controller_bin"; do
    [[ -x "$b" ]] || { say "$b: not an executable (cargo build -p stash-agent -p stash-controller)"; exit 1; }
done
[[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null || {
    say "/bin/busybox missing: apt-get install busybox-static (hack/install-deps.sh)"
    exit 1
}
K8S_VERSION="${STASH_ENVTEST_K8S_VERSION:-1.36.3}"
PAUSE_VERSION=3.10.2
cache="${XDG_CACHE_HOME:-$HOME/.cache}/stash-node/pause-$PAUSE_VERSION"

mkdir -p "$out"
work="$(mktemp -d -t stash-images-XXXXXX)"
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

# oci_archive NAME ROOTFS CONFIG_JSON_FRAGMENT: one-layer image of ROOTFS.
# CONFIG_JSON_FRAGMENT is the image config's "config" object.
oci_archive() {
    local name="$1" rootfs="$2" config="$3" d="$work/oci-$RANDOM"
    mkdir -p "$d/blobs/sha256"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$rootfs" -cf "$d/layer.tar" .
    local diff_id layer_digest layer_size config_digest config_size manifest_digest manifest_size
    diff_id="$(sha "$d/layer.tar")"
    gzip -n -1 "$d/layer.tar"
    layer_digest="$(sha "$d/layer.tar.gz")"
    layer_size="$(stat -c %s "$d/layer.tar.gz")"
    mv "$d/layer.tar.gz" "$d/blobs/sha256/$layer_digest"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"hack/images.sh"}]}' \
        "$config" "$diff_id" >"$d/config.json"
    config_digest="$(sha "$d/config.json")"
    config_size="$(stat -c %s "$d/config.json")"
    mv "$d/config.json" "$d/blobs/sha256/$config_digest"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$d/manifest.json"
    manifest_digest="$(sha "$d/manifest.json")"
    manifest_size="$(stat -c %s "$d/manifest.json")"
    mv "$d/manifest.json" "$d/blobs/sha256/$manifest_digest"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest_digest" "$manifest_size" "$name" "${name##*:}" >"$d/index.json"
    local file="${name##*/}"
    file="${file%%:*}"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$d" -cf "$out/$file.tar" oci-layout index.json blobs
    rm -rf "$d"
    say "$name -> $out/$file.tar"
}

# Copies BIN to ROOTFS/usr/local/bin/ (without debug info) with every
# shared library ldd names, at the same paths.
install_binary() {
    local bin="$1" rootfs="$2" lib
    mkdir -p "$rootfs/usr/local/bin"
    objcopy --strip-debug "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
}

# pause
if [[ ! -x "$cache/pause" ]]; then
    src="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')/build/pause/linux/pause.c"
    mkdir -p "$cache"
    gcc -Os -static -DVERSION="v$PAUSE_VERSION-stash" -o "$cache/pause.tmp" "$src"
    strip "$cache/pause.tmp"
    mv "$cache/pause.tmp" "$cache/pause"
fi
mkdir -p "$work/pause"
cp "$cache/pause" "$work/pause/pause"
oci_archive "registry.k8s.io/pause:$PAUSE_VERSION" "$work/pause" \
    '{"Entrypoint":["/pause"],"User":"65535:65535"}'

# busybox
mkdir -p "$work/busybox/bin" "$work/busybox/tmp"
chmod 1777 "$work/busybox/tmp"
cp /bin/busybox "$work/busybox/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$work/busybox/bin/$applet"
done
oci_archive "docker.io/stash-test/busybox:1" "$work/busybox" \
    '{"Entrypoint":["/bin/sh"],"Env":["PATH=/bin"]}'

# agent: Dockerfile.agent
install_binary "$agent_bin" "$work/agent"
oci_archive "docker.io/library/stash-agent:0.1.0" "$work/agent" \
    '{"Entrypoint":["/usr/local/bin/stash"],"Cmd":["agent"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'

# controller: Dockerfile.controller
install_binary "$controller_bin" "$work/controller"
oci_archive "docker.io/library/stash-controller:0.1.0" "$work/controller" \
    '{"Entrypoint":["/usr/local/bin/stash-controller"],"User":"65532:65532","ExposedPorts":{"8080/tcp":{}},"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'
