#!/usr/bin/env bash
# Installs what uffd-lab needs on a fresh Debian machine and reserves huge pages.
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

# Huge pages for the hugetlbfs backings and tests: 2 MiB pages, and two 1 GiB pages if the
# kernel can still find contiguous memory for them.
want_2m=${UFFD_LAB_HUGEPAGES_2M:-1024}
want_1g=${UFFD_LAB_HUGEPAGES_1G:-2}
if need_root; then
  have=$(cat /proc/sys/vm/nr_hugepages)
  # What counts is the pages free and not reserved: reservations can outlive every process
  # (on 6.18 moving part of a private hugetlb mapping with mremap leaks the reservations of
  # the rest, as tests/events.rs does; see RELIABILITY.md), and those pages can never be had
  # again.
  p2m=/sys/kernel/mm/hugepages/hugepages-2048kB
  avail=$(( $(cat "$p2m/free_hugepages") - $(cat "$p2m/resv_hugepages") ))
  if [ "$have" -lt "$want_2m" ] || [ "$avail" -lt "$want_2m" ]; then
    target=$(( have + want_2m - avail ))
    [ "$target" -ge "$want_2m" ] || target=$want_2m
    echo "$target" > /proc/sys/vm/nr_hugepages
    echo "setup: vm.nr_hugepages $have -> $(cat /proc/sys/vm/nr_hugepages) (2 MiB pages; $avail were free and unreserved)"
  fi
  g=/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
  if [ -w "$g" ] && [ "$(cat "$g")" -lt "$want_1g" ]; then
    echo "$want_1g" > "$g" || true
    echo "setup: 1 GiB huge pages: $(cat "$g")"
  fi
fi
