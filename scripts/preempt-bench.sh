#!/usr/bin/env bash
# preempt-bench.sh: urgent-fault latency with and without preemption, on the two-host lab
# (scripts/netlab.sh) at 1 Gbit/s, while huge pages stream in the background.
#
# For each round it runs, alternating the order of the two modes from round to round:
#   thp        preempt (default page-server) | --no-preempt
#   hugetlb-2m preempt                        | --no-preempt
# then the chunk-size runs (thp, preempt, --chunk 16KiB and 256KiB; 64KiB is the default).
# The lab is taken down at the end (also on error or Ctrl-C).
# Each run is a fresh page-server (synthetic image, zero-fraction 0: every page is real data)
# and one `fault-client run --workload random --json`; its latency_us is measured by the
# workload threads from the access to its return. The summary gives, per mode, the median
# over the rounds of p50/p90/p99/mean and elapsed_s, the max of max, the samples, and the
# ratios against the targets.
#
# Usage (root): scripts/preempt-bench.sh [options]
#   --rounds N         rounds of the four main runs (default 3)
#   --size SIZE        synthetic image (default 1GiB)
#   --rate RATE        link rate (default 1gbit); --lab "ARGS" passes more to `netlab.sh up`
#                      (e.g. --lab "--limit 4mb" or --lab "--qdisc prio")
#   --threads N        workload threads (default 1); --touch F fraction touched (default
#                      0.002: few enough faults that even without preemption the workload
#                      ends before the background stream, so elapsed_s is the transfer time)
#   --chunks "A B"     extra thp-preempt chunk sizes (default "16KiB 256KiB"; "" for none)
#   --server-args "ARGS"    more `page-server` arguments for every run, both modes
#                      (e.g. --server-args "--max-bandwidth 900mbit"; the setting that meets
#                      every target on a FIFO link, BENCHMARKS.md section 5:
#                      --server-args "--max-bandwidth 900mbit --urgent-rt-priority 10"
#                      --client-args "--urgent-rt-priority 10")
#   --server-env "K=V ..."  environment for page-server (experiments)
#   --client-args "ARGS"    more `fault-client run` arguments for every run
#                      (e.g. --client-args "--background-window 128KiB")
#   --nice N           run server and client at this niceness (default -5; 0 to disable):
#                      on a small shared machine, other jobs' CPU use otherwise shows up
#                      as scheduling delay in the fault latency
#   --timeout S        a client still running after S seconds is killed and counted as a
#                      hang (default 60); every thread's kernel stack goes to runs/NAME.hang
#   --out DIR          where runs and the summary go (default target/preempt-bench/<time>)
#   --no-build         do not run cargo build
# Binaries: $PAGE_SERVER / $FAULT_CLIENT, else target/release (built first).
# Takes about 3 minutes with the defaults: 18 runs of ~10 s (1 GiB at 1 Gbit/s is ~9 s).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NETLAB="$ROOT/scripts/netlab.sh"
ROUNDS=3 SIZE=1GiB RATE=1gbit LAB_ARGS="" THREADS=1 TOUCH=0.002 CHUNKS="16KiB 256KiB"
SERVER_ENV="" SERVER_ARGS="" CLIENT_ARGS="" NICE=-5 TIMEOUT=60 OUT="" BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --lab) LAB_ARGS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --touch) TOUCH=$2; shift 2 ;;
    --chunks) CHUNKS=$2; shift 2 ;;
    --server-args) SERVER_ARGS=$2; shift 2 ;;
    --server-env) SERVER_ENV=$2; shift 2 ;;
    --client-args) CLIENT_ARGS=$2; shift 2 ;;
    --nice) NICE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "preempt-bench: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "preempt-bench: run as root (network namespaces)" >&2; exit 1; }

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ $BUILD -eq 1 ] && [ -z "${PAGE_SERVER:-}${FAULT_CLIENT:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p page-server -p fault-client)
fi
export PAGE_SERVER=${PAGE_SERVER:-$BIN/page-server}
export FAULT_CLIENT=${FAULT_CLIENT:-$BIN/fault-client}
OUT=${OUT:-$ROOT/target/preempt-bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/runs"

"$ROOT/scripts/setup.sh" >/dev/null
HUGEPAGES_STATE="$OUT/hugepages"
"$ROOT/scripts/hugepages.sh" reserve --state "$HUGEPAGES_STATE"
NICE_CMD=()
[ "$NICE" = 0 ] || NICE_CMD=(nice -n "$NICE")

SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  "$NETLAB" down
  "$ROOT/scripts/hugepages.sh" release --state "$HUGEPAGES_STATE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck disable=SC2086
"$NETLAB" up --rate "$RATE" $LAB_ARGS | tee "$OUT/lab.txt"
ip netns exec uffdlab-srv tc qdisc show dev uffdlab-s >>"$OUT/lab.txt"
PORT=7070

drops() { # packets the server-side qdisc dropped so far
  ip netns exec uffdlab-srv tc -s qdisc show dev uffdlab-s |
    awk '/dropped/ { for (i = 1; i <= NF; i++) if ($i == "(dropped") { gsub(",", "", $(i+1)); s += $(i+1) } } END { print s + 0 }'
}

# Every thread of the page-server and fault-client processes: name, state, scheduling policy,
# where it sleeps and its kernel stack; then the lab's queues and sockets.
hang_report() {
  local pid t
  for pid in $(pgrep -x page-server) $(pgrep -x fault-client); do
    echo "== pid $pid $(cat "/proc/$pid/cmdline" 2>/dev/null | tr '\0' ' ')"
    for t in /proc/"$pid"/task/*; do
      echo "-- $(cat "$t/comm") state $(awk '{print $3}' "$t/stat") policy $(awk '{print $41}' "$t/stat") wchan $(cat "$t/wchan")"
      cat "$t/stack"
    done
  done
  "$NETLAB" status
}

# run NAME BACKING "SERVER ARGS" -- one page-server and one fault-client
run() {
  local name=$1 backing=$2 sargs=$3
  local log="$OUT/runs/$name.server.log" json="$OUT/runs/$name.json"
  # shellcheck disable=SC2086
  env $SERVER_ENV "${NICE_CMD[@]}" "$NETLAB" run-server --listen "10.77.0.1:$PORT" \
    --synthetic "$SIZE" --zero-fraction 0 $SERVER_ARGS $sargs >"$log" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1 200); do
    grep -qs '^listening on' "$log" && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  grep -q '^listening on' "$log" || { echo "page-server did not start:" >&2; cat "$log" >&2; exit 1; }
  local d0 rc=0 client waited=0
  d0=$(drops)
  # shellcheck disable=SC2086
  "${NICE_CMD[@]}" "$NETLAB" run-client run \
    --server "10.77.0.1:$PORT" --backing "$backing" --workload random \
    --threads "$THREADS" --touch "$TOUCH" --seed 1 --json $CLIENT_ARGS >"$json" 2>"$OUT/runs/$name.client.err" &
  client=$!
  while kill -0 "$client" 2>/dev/null && [ "$waited" -lt $((TIMEOUT * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$client" 2>/dev/null; then
    # A hang: record where every thread of both sides is before killing them.
    hang_report >"$OUT/runs/$name.hang" 2>&1
    echo "  $name: still running after ${TIMEOUT}s; threads' kernel stacks in runs/$name.hang" >&2
    kill -KILL "$client" 2>/dev/null || true
  fi
  wait "$client" || rc=$?
  local d1
  d1=$(drops)
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  # A killed client may leave its netns child behind.
  for i in $(ip netns pids uffdlab-cli); do kill -KILL "$i" 2>/dev/null || true; done
  printf '{"name":"%s","rc":%d,"drops":%d}\n' "$name" "$rc" "$((d1 - d0))" >"$OUT/runs/$name.meta"
  python3 - "$json" "$name" "$rc" "$((d1 - d0))" <<'EOF'
import json, sys
path, name, rc, drops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    d = json.load(open(path)); l = d["latency_us"]
    print(f"  {name:<28} elapsed {d['elapsed_s']:6.2f}s  p50 {l['p50']:8.0f}  p90 {l['p90']:8.0f}  "
          f"p99 {l['p99']:8.0f}  max {l['max']:8.0f}  mean {l['mean']:8.0f} us  n {l['samples']}  drops {drops}")
except Exception:
    print(f"  {name:<28} FAILED (rc {rc}: {'hang, killed after timeout' if rc in (124, 137) else 'error'})")
EOF
}

echo "preempt-bench: $ROUNDS rounds, $SIZE image, threads $THREADS, touch $TOUCH -> $OUT"
for r in $(seq 1 "$ROUNDS"); do
  for backing in thp hugetlb-2m; do
    if [ $((r % 2)) -eq 1 ]; then order="preempt no-preempt"; else order="no-preempt preempt"; fi
    for mode in $order; do
      if [ "$mode" = preempt ]; then sargs=""; else sargs="--no-preempt"; fi
      run "$backing.$mode.64KiB.r$r" "$backing" "$sargs"
    done
  done
  for chunk in $CHUNKS; do
    run "thp.preempt.$chunk.r$r" thp "--chunk $chunk"
  done
done

python3 - "$OUT" "$ROUNDS $SIZE threads=$THREADS touch=$TOUCH rate=$RATE lab='$LAB_ARGS' server-args='$SERVER_ARGS' server-env='$SERVER_ENV' client-args='$CLIENT_ARGS'" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys, statistics as st
out, conf = sys.argv[1], sys.argv[2]
runs = {}
hangs = {}
for f in sorted(os.listdir(os.path.join(out, "runs"))):
    if not f.endswith(".meta"):
        continue
    meta = json.load(open(os.path.join(out, "runs", f)))
    name = meta["name"]
    backing, mode, chunk, _ = name.split(".")
    key = (backing, mode, chunk)
    try:
        d = json.load(open(os.path.join(out, "runs", name + ".json")))
    except Exception:
        hangs[key] = hangs.get(key, 0) + 1
        continue
    d["drops"] = meta["drops"]
    runs.setdefault(key, []).append(d)

def agg(ds):
    med = lambda k: st.median(x["latency_us"][k] for x in ds)
    return {
        "p50": med("p50"), "p90": med("p90"), "p99": med("p99"), "mean": med("mean"),
        "max": max(x["latency_us"]["max"] for x in ds),
        "n": sum(x["latency_us"]["samples"] for x in ds),
        "elapsed": st.median(x["elapsed_s"] for x in ds),
        "drops": sum(x["drops"] for x in ds), "runs": len(ds),
    }

order = [("thp", "preempt", "64KiB"), ("thp", "no-preempt", "64KiB"),
         ("hugetlb-2m", "preempt", "64KiB"), ("hugetlb-2m", "no-preempt", "64KiB"),
         ("thp", "preempt", "16KiB"), ("thp", "preempt", "256KiB")]
keys = [k for k in order if k in runs or k in hangs] + \
       sorted(k for k in set(runs) | set(hangs) if k not in order)
A = {k: agg(v) for k, v in runs.items()}
print(f"## preempt-bench: {conf}\n")
print("Latency in microseconds (latency_us of the fault-client: access to return, per workload")
print("thread); per mode the median over the runs of p50/p90/p99/mean/elapsed, the largest max.\n")
print("| backing | mode | chunk | runs | samples | p50 | p90 | p99 | max | mean | elapsed_s | qdisc drops | hangs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in keys:
    a = A.get(k)
    h = hangs.get(k, 0)
    if a is None:
        print(f"| {k[0]} | {k[1]} | {k[2]} | 0 | | | | | | | | | {h} |")
        continue
    print(f"| {k[0]} | {k[1]} | {k[2]} | {a['runs']} | {a['n']} | {a['p50']:.0f} | {a['p90']:.0f} | "
          f"{a['p99']:.0f} | {a['max']:.0f} | {a['mean']:.0f} | {a['elapsed']:.2f} | {a['drops']} | {h} |")

def ratio(num, den, field):
    if num in A and den in A and A[den][field] > 0:
        return A[num][field] / A[den][field]
    return None

print("\n| ratio | value | target | met |")
print("|---|---|---|---|")
rows = [
    ("thp p99 no-preempt / preempt", ratio(("thp", "no-preempt", "64KiB"), ("thp", "preempt", "64KiB"), "p99"), ">= 10", lambda v: v >= 10),
    ("hugetlb-2m mean no-preempt / preempt", ratio(("hugetlb-2m", "no-preempt", "64KiB"), ("hugetlb-2m", "preempt", "64KiB"), "mean"), ">= 1.8", lambda v: v >= 1.8),
    ("thp elapsed preempt / no-preempt", ratio(("thp", "preempt", "64KiB"), ("thp", "no-preempt", "64KiB"), "elapsed"), "<= 1.1", lambda v: v <= 1.1),
    ("hugetlb-2m elapsed preempt / no-preempt", ratio(("hugetlb-2m", "preempt", "64KiB"), ("hugetlb-2m", "no-preempt", "64KiB"), "elapsed"), "<= 1.1", lambda v: v <= 1.1),
]
for name, v, target, ok in rows:
    print(f"| {name} | {'-' if v is None else f'{v:.2f}'} | {target} | {'-' if v is None else ('yes' if ok(v) else 'NO')} |")

# The same ratios round by round (each round's preempt run against its own no-preempt run):
# how often a single round meets a target says more than one median of few rounds.
by_round = {}
for f in sorted(os.listdir(os.path.join(out, "runs"))):
    if f.endswith(".json"):
        backing, mode, chunk, rnd = f[:-5].split(".")
        try:
            by_round[(backing, mode, chunk, rnd)] = json.load(open(os.path.join(out, "runs", f)))
        except Exception:
            pass
rounds = sorted({k[3] for k in by_round}, key=lambda r: int(r[1:]))
per_round = []
for r in rounds:
    row = [r]
    for backing, field, target in (("thp", "p99", 10), ("hugetlb-2m", "mean", 1.8)):
        pre, nop = by_round.get((backing, "preempt", "64KiB", r)), by_round.get((backing, "no-preempt", "64KiB", r))
        if pre and nop and pre["latency_us"][field] > 0:
            v = nop["latency_us"][field] / pre["latency_us"][field]
            row.append(f"{v:.2f} {'yes' if v >= target else 'NO'}")
        else:
            row.append("-")
    per_round.append(row)
if per_round:
    print("\nRound by round:\n")
    print("| round | thp p99 no-preempt / preempt (>= 10) | hugetlb-2m mean no-preempt / preempt (>= 1.8) |")
    print("|---|---|---|")
    for row in per_round:
        print("| " + " | ".join(row) + " |")
    for i, name in ((1, "thp p99"), (2, "hugetlb-2m mean")):
        met = sum(1 for row in per_round if row[i].endswith("yes"))
        print(f"\n{name}: target met in {met} of {len(per_round)} rounds", end="")
    print()

print("\nPer run:\n")
print("| run | p50 | p90 | p99 | max | mean | samples | elapsed_s | drops |")
print("|---|---|---|---|---|---|---|---|---|")
for f in sorted(os.listdir(os.path.join(out, "runs"))):
    if f.endswith(".meta"):
        name = json.load(open(os.path.join(out, "runs", f)))["name"]
        try:
            d = json.load(open(os.path.join(out, "runs", name + ".json")))
        except Exception:
            print(f"| {name} | hang/error | | | | | | | |")
            continue
        l = d["latency_us"]
        drops = json.load(open(os.path.join(out, "runs", f)))["drops"]
        print(f"| {name} | {l['p50']:.0f} | {l['p90']:.0f} | {l['p99']:.0f} | {l['max']:.0f} | "
              f"{l['mean']:.0f} | {l['samples']} | {d['elapsed_s']:.2f} | {drops} |")
EOF
