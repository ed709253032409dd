#!/usr/bin/env bash
# Installs what Stash's tests need on a Debian bookworm machine that already
# has the Rust toolchain (rustup and cargo):
#   restic   the real restic, the oracle our repository format is tested against
#   attr     getfattr/setfattr, to look at extended attributes by hand
#   rustfmt and clippy, the rustup components hack/test.sh runs
#   go and npm, which hack/test-servers.sh builds the test servers with
#   libseccomp-dev (runc's seccomp, hack/node.sh), busybox-static (the test
#   node's workload image, hack/images.sh), iptables (kube-proxy on the test
#   node)
#   postgresql, the real server and client tools of the database-dump tests
#   (stash_testkit::postgres)
# Idempotent: installs only what is missing, and runs `apt-get update` only
# then. Needs root, or sudo, only when something must be installed.
set -euo pipefail

say() { echo "install-deps: $*"; }

# Debian package -> a command it provides.
declare -A provides=([restic]=restic [attr]=getfattr [libseccomp-dev]=/usr/include/seccomp.h
    [busybox-static]=/bin/busybox [iptables]=iptables-restore
    [postgresql]=/usr/lib/postgresql/*/bin/postgres)

missing=()
for pkg in restic attr libseccomp-dev busybox-static iptables postgresql; do
    # (a glob such as the server's versioned path matches when installed)
    if command -v "${provides[$pkg]}" >/dev/null 2>&1 || compgen -G "${provides[$pkg]}" >/dev/null; then
        say "$pkg: present ($(command -v "${provides[$pkg]}" || echo "${provides[$pkg]}"))"
    else
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        say "cannot install ${missing[*]}: not root and no sudo" >&2
        exit 1
    fi
    say "installing ${missing[*]}: apt-get update, then apt-get install"
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
fi
say "$(restic version)"

# The storage-backend tests run servers that hack/test-servers.sh builds
# with the Go toolchain (MinIO, rest-server, fake-gcs-server, toxiproxy, a
# current restic) and npm (Azurite). Debian's Go is too old for MinIO, so Go
# must come with the machine; npm comes from Debian when missing.
if command -v go >/dev/null 2>&1; then
    say "go: present ($(go version))"
else
    say "go is missing: install a Go toolchain >= 1.24 (hack/test-servers.sh builds the test servers with it)" >&2
    exit 1
fi
if command -v npm >/dev/null 2>&1; then
    say "npm: present"
else
    say "npm: missing, apt-get install nodejs npm"
    if [[ $(id -u) -eq 0 ]]; then as_root=(); else as_root=(sudo); fi
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends nodejs npm
fi

# rustup component -> its cargo subcommand.
declare -A subcommand=([rustfmt]=fmt [clippy]=clippy)

for component in rustfmt clippy; do
    if cargo "${subcommand[$component]}" --version >/dev/null 2>&1; then
        say "$component: present"
    else
        say "$component: missing, rustup component add $component"
        rustup component add "$component"
    fi
done

# cargo-afl, the fuzzer of hack/fuzz.sh (fuzz/README.md says why AFL++):
# installed from crates.io into ~/.cache/stash-fuzz, where its install also
# builds AFL++ from the source it ships (needs make and a C compiler) under
# XDG_DATA_HOME. AFL++ is built per rustc version, so a new toolchain
# rebuilds it (`cargo afl config --build`). Cold: about 2 min 20 s on 2 cores.
afl_version=0.18.2
afl_root="$HOME/.cache/stash-fuzz"
export XDG_DATA_HOME="$afl_root/share"
if [[ $("$afl_root/bin/cargo-afl" afl --version 2>/dev/null) == "cargo-afl $afl_version "* ]]; then
    say "cargo-afl: present ($("$afl_root/bin/cargo-afl" afl --version))"
else
    say "cargo-afl: missing, cargo install cargo-afl $afl_version into $afl_root"
    cargo install --locked --root "$afl_root" --version "$afl_version" cargo-afl
fi
if ! compgen -G "$XDG_DATA_HOME/afl.rs/rustc-$(rustc --version | awk '{print $2}')-*/afl.rs-$afl_version/afl/bin/afl-fuzz" >/dev/null; then
    say "AFL++: not built for this rustc, cargo afl config --build"
    "$afl_root/bin/cargo-afl" afl config --build --force
fi
