#!/usr/bin/env bash
# Installs what uffd-lab needs on a fresh Debian machine (huge pages: scripts/hugepages.sh).
# Idempotent; run as root (CI is root). Without root it only reports what is missing.
set -euo pipefail

need_root() { [ "$(id -u)" -eq 0 ]; }

missing=()
# userfaultfd-sys runs bindgen at build time: it needs libclang.
if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
  missing+=(libclang-dev)
fi
# The two-host lab (scripts/netlab.sh) needs ip and tc.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v tc >/dev/null 2>&1 || missing+=(iproute2)

if [ ${#missing[@]} -gt 0 ]; then
  if need_root; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}: run as root, or install them" >&2
    exit 1
  fi
fi
