#!/usr/bin/env bash
# The main demo on built-in defaults: a page-server child with a synthetic 256 MiB image, the
# random workload on 4 threads with the background stream, every page verified.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p page-server -p fault-client
exec target/release/fault-client demo "$@"
