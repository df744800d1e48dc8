#!/usr/bin/env bash
# Installs the system packages meshfs and its tests need, with apt, only when missing and root.
# A missing prerequisite that cannot be installed stops with one line saying what to install.
set -euo pipefail
need_cmds=(fusermount3 git rsync sqlite3 getfattr setfattr flock setpriv curl tar vim openssl systemd-analyze)
pkg_of() {
  case "$1" in
    fusermount3) echo fuse3 ;; getfattr | setfattr) echo attr ;; flock | setpriv) echo util-linux ;;
    systemd-analyze) echo systemd ;; *) echo "$1" ;;
  esac
}
missing=()
for c in "${need_cmds[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$(pkg_of "$c")"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "meshfs: installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "meshfs: missing system packages: ${missing[*]} (install them: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
command -v go >/dev/null || { echo "meshfs: Go >= 1.25 is needed to build the dev Reva: install it (https://go.dev/doc/install)" >&2; exit 1; }
