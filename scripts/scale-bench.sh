#!/usr/bin/env bash
# How costs grow with the work (BENCHMARKS.md, "Scaling"): time per GiB of filling a region
# from a synthetic image against the first touch of as much new memory, at several image
# sizes, and throughput against concurrent sessions. Builds the release binaries, then runs
# benches/scale.rs under the benchmark lock (no two benchmarks at once on this machine).
#
#   scripts/scale-bench.sh [--sizes 1,2,4,8,16] [--rounds 3] [--sessions 1,8,32,64]
#                          [--session-image 128MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p page-server -p fault-client
cargo bench --bench scale --no-run
# -o: the lock stays with flock, not with the page-servers the bench starts.
exec flock -o /tmp/uffd-bench.lock cargo bench --bench scale -- "$@"
