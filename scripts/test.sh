#!/usr/bin/env bash
# The whole test suite: installs what is missing, reserves the huge pages the huge-page tests
# need (and gives them back at the end), builds everything, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
state=$(mktemp /tmp/uffd-lab-hugepages.XXXXXX)
trap 'scripts/hugepages.sh release --state "$state"' EXIT
scripts/hugepages.sh reserve --state "$state"
cargo test --workspace --no-fail-fast
