#!/usr/bin/env bash
# Reserves the hugetlbfs pages the huge-page tests and benchmarks need, and gives them back.
#
#   scripts/hugepages.sh reserve [--state FILE]   grow the pools to WANT free pages each
#   scripts/hugepages.sh release [--state FILE]   shrink them by what `reserve` added
#   scripts/hugepages.sh status                   the pools now
#
# WANT is UFFD_LAB_HUGEPAGES_2M (default 1024 pages of 2 MiB) and UFFD_LAB_HUGEPAGES_1G
# (default 2 pages of 1 GiB). What counts is the pages free and not reserved: a reservation can
# outlive every process (see RELIABILITY.md, known limits), and such a page cannot be had again.
# `reserve` writes what it added to FILE (default /run/uffd-lab/hugepages), and `release`
# takes exactly that back, so pools a user sized by hand stay as they were. Needs root.
set -euo pipefail

action=${1:-status}
shift || true
state=/run/uffd-lab/hugepages
while [ $# -gt 0 ]; do
  case "$1" in
    --state) state=$2; shift 2 ;;
    *) echo "hugepages.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

pool() { echo "/sys/kernel/mm/hugepages/hugepages-$1kB"; }
name() { [ "$1" = 2048 ] && echo "2 MiB" || echo "1 GiB"; }

status() {
  for kb in 2048 1048576; do
    local p; p=$(pool "$kb")
    [ -d "$p" ] || continue
    echo "$(name "$kb") pages: $(cat "$p/nr_hugepages") in the pool, $(cat "$p/free_hugepages") free, $(cat "$p/resv_hugepages") reserved"
  done
}

reserve() {
  mkdir -p "$(dirname "$state")"
  for kb in 2048 1048576; do
    local p want have avail target added
    p=$(pool "$kb")
    [ -w "$p/nr_hugepages" ] || continue
    if [ "$kb" = 2048 ]; then want=${UFFD_LAB_HUGEPAGES_2M:-1024}; else want=${UFFD_LAB_HUGEPAGES_1G:-2}; fi
    have=$(cat "$p/nr_hugepages")
    avail=$(( $(cat "$p/free_hugepages") - $(cat "$p/resv_hugepages") ))
    [ "$avail" -lt "$want" ] || continue
    target=$(( have + want - avail ))
    # The kernel may find fewer contiguous blocks than asked (1 GiB pages especially).
    echo "$target" > "$p/nr_hugepages" 2>/dev/null || true
    added=$(( $(cat "$p/nr_hugepages") - have ))
    [ "$added" -gt 0 ] || continue
    echo "$kb $added" >> "$state"
    echo "hugepages: reserved $added pages of $(name "$kb") ($(( added * kb / 1024 )) MiB); 'scripts/hugepages.sh release' gives them back"
  done
}

release() {
  [ -f "$state" ] || return 0
  local kb added p now
  while read -r kb added; do
    p=$(pool "$kb")
    now=$(cat "$p/nr_hugepages")
    [ "$now" -ge "$added" ] || added=$now
    echo $(( now - added )) > "$p/nr_hugepages"
    echo "hugepages: released $added pages of $(name "$kb")"
  done < "$state"
  rm -f "$state"
}

case "$action" in
  reserve) reserve ;;
  release) release ;;
  status) status ;;
  *) echo "usage: scripts/hugepages.sh reserve|release|status [--state FILE]" >&2; exit 2 ;;
esac
