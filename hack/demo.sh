#!/usr/bin/env bash
# The main job on an embedded default, no cluster needed:
#   build stash, make a sample directory, create a local repository,
#   back up, change a file, back up again (incremental), list snapshots and
#   files, restore, and verify the restore byte for byte against the source.
# Everything lives in a temporary directory that is removed at the end
# (set KEEP=1 to keep it). If restic is installed, it checks the repository too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> building stash (release)"
cargo build --release -q -p stash-agent
STASH="$PWD/target/release/stash"

WORK="$(mktemp -d -t stash-demo-XXXXXX)"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; else echo "keeping $WORK"; fi

export STASH_REPOSITORY="$WORK/repo"
export STASH_PASSWORD_FILE="$WORK/password"
head -c 24 /dev/urandom | base64 > "$STASH_PASSWORD_FILE"

echo "==> sample data in $WORK/sample"
SAMPLE="$WORK/sample"
mkdir -p "$SAMPLE/docs" "$SAMPLE/data/nested/deeper" "$SAMPLE/empty-dir"
cp -r repo-format/src "$SAMPLE/docs/source-code"
cp README.md "$SAMPLE/docs/"
head -c $((8 * 1024 * 1024)) /dev/urandom > "$SAMPLE/data/random.bin"
head -c $((4 * 1024 * 1024)) < <(yes "a line of very compressible text") > "$SAMPLE/data/text.log"
cp "$SAMPLE/data/random.bin" "$SAMPLE/data/nested/duplicate.bin"
ln -s ../data/random.bin "$SAMPLE/docs/link-to-random"
ln "$SAMPLE/data/text.log" "$SAMPLE/data/nested/deeper/hardlink.log"
printf 'name with "quotes" and spaces\n' > "$SAMPLE/docs/odd \"name\" here.txt"
: > "$SAMPLE/empty-file"
chmod 0640 "$SAMPLE/data/text.log"

echo "==> stash init"
"$STASH" init
echo "==> stash backup (first)"
"$STASH" backup "$SAMPLE" --tag demo
echo "==> stash backup (after changing one file: incremental)"
echo "changed at $(date)" >> "$SAMPLE/docs/README.md"
"$STASH" backup "$SAMPLE" --tag demo
echo "==> stash snapshots"
"$STASH" snapshots
echo "==> stash ls latest (first lines)"
"$STASH" ls latest | head -n 12
echo "==> stash check --read-data"
"$STASH" check --read-data
echo "==> stash restore latest"
"$STASH" restore latest --target "$WORK/restore"

echo "==> verifying the restore against the source"
RESTORED="$WORK/restore${SAMPLE}"
diff -r --no-dereference "$SAMPLE" "$RESTORED"
# Metadata too: type, mode, size, mtime (ns), owner, link count, per entry.
meta() { (cd "$1" && find . -printf '%P %y %m %s %T@ %u %g %n %l\n' | sort); }
if ! diff <(meta "$SAMPLE") <(meta "$RESTORED"); then
    echo "metadata differs" >&2
    exit 1
fi
echo "restore is identical to the source (content and metadata)"

if command -v restic >/dev/null; then
    echo "==> restic check --read-data (restic reads what stash wrote)"
    RESTIC_PASSWORD_FILE="$STASH_PASSWORD_FILE" restic -r "$STASH_REPOSITORY" --no-cache check --read-data
fi
echo "==> demo finished successfully"
