#!/usr/bin/env bash
# `make demo`: start the dev Reva, put demo content on it, mount einstein's view and print its tree.
# The mount stays up for you to explore; `meshfs umount <mountpoint>` (printed below) ends it.
# DEMO_UNMOUNT=1 unmounts at the end (what CI-like runs want).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv/bin
dev/reva/revactl build
dev/reva/revactl up
eval "$(dev/reva/revactl env)"
$VENV/python dev/demo_content.py
MP=${DEMO_MOUNTPOINT:-$PWD/.cache/demo/mnt}
CACHE=${DEMO_CACHE:-$PWD/.cache/demo/cache}
PW=$PWD/.cache/demo/einstein.password
mkdir -p "$MP" "$(dirname "$PW")"
( umask 077; printf 'relativity\n' > "$PW" )
if grep -qs " $MP fuse" /proc/mounts; then
  $VENV/meshfs umount "$MP" || $VENV/meshfs umount --lazy "$MP" || true
fi
$VENV/meshfs mount "cs3://einstein@${REVA_GATEWAY}" "$MP" --password-file "$PW" --cache-dir "$CACHE" -o tls=false
echo
echo "einstein's view of the dev Reva, mounted at $MP:"
if command -v tree >/dev/null; then tree -a -L 3 "$MP"; else find "$MP" -maxdepth 3 | sed "s#^$MP#.#" | sort; fi
echo
echo "Try:  cat $MP/shared-with-me/radium-analysis/results.csv ; flock $MP/home/welcome.ipynb -c 'sleep 5'"
echo "      $VENV/meshfs status $MP"
if [[ ${DEMO_UNMOUNT:-0} == 1 ]]; then
  $VENV/meshfs umount "$MP"
  echo "unmounted $MP"
else
  echo "Unmount with: $VENV/meshfs umount $MP"
fi
