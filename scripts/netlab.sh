#!/usr/bin/env bash
# netlab.sh: a two-host lab on one machine, for measuring uffd-lab over a real (shaped) link.
#
#   uffdlab-srv (page-server)                          uffdlab-cli (fault-client)
#   10.77.0.1/24  uffdlab-s  <=== veth pair ===>  uffdlab-c  10.77.0.2/24
#                 root qdisc tbf (rate R)          root qdisc tbf (rate R)
#
# Both veth ends carry the shaper, so both directions are shaped (data flows server ->
# client; requests and ACKs client -> server).
#
# Usage (root):
#   netlab.sh up [--rate 1gbit] [--burst 64kb] [--limit 4mb] [--qdisc tbf|prio]
#                                     create (removes the leftovers of a crashed run first)
#   netlab.sh down                    remove everything (idempotent)
#   netlab.sh status                  namespaces, addresses, qdisc counters, TCP sockets
#   netlab.sh run-server ARGS...      page-server ARGS inside uffdlab-srv
#                                     (adds --listen 10.77.0.1:7070 unless ARGS has --listen)
#   netlab.sh run-client ARGS...      fault-client ARGS inside uffdlab-cli
#                                     (e.g. run --server 10.77.0.1:7070 --backing thp --json)
#   netlab.sh exec srv|cli CMD...     any command in one namespace (e.g. exec srv ss -tmi)
#   netlab.sh once [--rate R ...] [SERVER ARGS...] -- CLIENT ARGS...
#                                     one shot: lab up (unless it is), page-server, one
#                                     fault-client, then server and lab gone again
# run-server, run-client and exec stay in the foreground and kill their child when they are
# interrupted or killed (trap), so no process is left in a namespace; `once` also takes the
# lab down on exit if it brought it up.
#
# Binaries: $PAGE_SERVER and $FAULT_CLIENT, else ${CARGO_TARGET_DIR:-<repo>/target}/release/.
# Names and addresses: NETLAB_NS_SRV, NETLAB_NS_CLI, NETLAB_SRV_IP, NETLAB_CLI_IP, NETLAB_PORT
# (private addresses only: they exist inside these two namespaces and nowhere else).
#
# Why tbf and not netem: netem is not built into this kernel (nor fq, fq_codel, prio, sfq;
# tbf, htb and the fifos are), and we need no delay or loss emulation anyway: what decides
# urgent-fault latency is a bottleneck of a known rate and the queue in front of it, which is
# what a token bucket is: a byte FIFO of `limit` bytes drained at `rate`, with `burst` bytes
# of credit. (veth itself has no rate: it moves bytes at memory speed, so the bottleneck must
# be made.) The queueing delay is explicit and measurable (`tc -s qdisc`: backlog, drops).
#
# How the queue affects urgent latency. tbf has ONE first-in-first-out queue for both
# connections of a session: an urgent answer waits behind every background byte already in
# the qdisc (backlog / rate: 128 KiB = 1 ms at 1 Gbit/s). Behind the qdisc, the background
# socket holds more: up to SO_SNDBUF (autotuned to 4 MiB = 34 ms here) of data the
# page-server has written but the kernel not yet sent. The page-server's background thread
# pauses at chunk boundaries, but what it already wrote keeps flowing into the qdisc (TCP
# small queues refill it as it drains), so the urgent answer still shares the link with it,
# and a page that is already in that buffer arrives only after everything in front of it.
# The limit is a cap, not the queue length: measured here, TCP (BBR) keeps a median 36 KB,
# p90 118 KB, max 0.8 MB in the FIFO (BBR overestimates the bandwidth of a shaped veth) and
# never reaches 4 MB. A SMALL limit is worse, not better: 128-256 KiB made tbf drop packets
# of the local TCP senders (thousands to tens of thousands per run); a dropped urgent
# answer is not retransmitted by a fast path (a local drop on an idle socket waits for the
# probe timer, >= 200 ms, doubling), which gave urgent faults of 0.3-1 s. Hence the default
# limit 4mb, with burst 64kb (one TSO packet): no drops, and the backlog is what TCP makes
# it. `--qdisc prio` gives marked urgent packets their own class (what fq_codel or a
# DSCP-aware switch does on a real network).
set -Eeuo pipefail

NS_SRV=${NETLAB_NS_SRV:-uffdlab-srv}
NS_CLI=${NETLAB_NS_CLI:-uffdlab-cli}
VETH_SRV=${NETLAB_VETH_SRV:-uffdlab-s}
VETH_CLI=${NETLAB_VETH_CLI:-uffdlab-c}
SRV_IP=${NETLAB_SRV_IP:-10.77.0.1}
CLI_IP=${NETLAB_CLI_IP:-10.77.0.2}
PREFIX=${NETLAB_PREFIX:-24}
PORT=${NETLAB_PORT:-7070}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
PAGE_SERVER=${PAGE_SERVER:-$BIN/page-server}
FAULT_CLIENT=${FAULT_CLIENT:-$BIN/fault-client}

die() { echo "netlab: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces)"; }
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
is_up() { ns_exists "$NS_SRV" && ns_exists "$NS_CLI"; }

usage() { sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# Kills the processes still running inside a namespace (ours: nothing else lives there).
kill_ns_pids() {
  local ns=$1 pids
  ns_exists "$ns" || return 0
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  kill $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    sleep 0.2
  done
  kill -9 $pids 2>/dev/null || true
}

cmd_down() {
  need_root
  local ns
  for ns in "$NS_CLI" "$NS_SRV"; do
    kill_ns_pids "$ns"
    if ns_exists "$ns"; then ip netns del "$ns" 2>/dev/null || true; fi
  done
  # A veth left in the root namespace by a half-finished `up` (deleting a namespace deletes
  # the veth inside it, and with it its peer).
  ip link del "$VETH_SRV" 2>/dev/null || true
  ip link del "$VETH_CLI" 2>/dev/null || true
}

# Shapes one veth end to `rate`, with `burst` bytes of token credit and queues of `limit`
# bytes. --qdisc picks the queueing:
#   tbf (default) tbf with its own byte FIFO: ONE drop-tail queue for every connection.
#   prio          htb at the same rate with two classes: packets marked low-delay (IP TOS
#                 0x10, or DSCP EF, CS6 or CS7; u32 filters on the TOS byte) go to a
#                 class served before the bulk class; each class has a byte FIFO of `limit`.
#                 The page-server marks its urgent connection low-delay (IP_TOS), so it
#                 goes in the first class; unmarked traffic behaves as with tbf.
# (This kernel has neither netem nor fq/fq_codel/prio/sfq; tbf, htb and the fifos are built in.)
shape() {
  local ns=$1 dev=$2
  local tcx=(ip netns exec "$ns" tc)
  case $QDISC in
    tbf)
      "${tcx[@]}" qdisc replace dev "$dev" root handle 1: \
        tbf rate "$RATE" burst "$BURST" limit "$LIMIT" ;;
    prio)
      "${tcx[@]}" qdisc replace dev "$dev" root handle 1: htb default 20
      "${tcx[@]}" class add dev "$dev" parent 1: classid 1:1 htb \
        rate "$RATE" ceil "$RATE" burst "$BURST" cburst "$BURST" quantum 60000
      # Urgent: guaranteed the whole rate, first in line. Bulk: a token guarantee, borrows
      # the rest. htb serves classes within their own rate before borrowing ones.
      "${tcx[@]}" class add dev "$dev" parent 1:1 classid 1:10 htb \
        rate "$RATE" ceil "$RATE" burst "$BURST" cburst "$BURST" prio 0 quantum 60000
      "${tcx[@]}" class add dev "$dev" parent 1:1 classid 1:20 htb \
        rate 1mbit ceil "$RATE" burst "$BURST" cburst "$BURST" prio 1 quantum 60000
      "${tcx[@]}" qdisc add dev "$dev" parent 1:10 handle 10: bfifo limit "$LIMIT"
      "${tcx[@]}" qdisc add dev "$dev" parent 1:20 handle 20: bfifo limit "$LIMIT"
      local tos
      # TOS low-delay (0x10), DSCP EF (0xb8), CS6 (0xc0), CS7 (0xe0).
      for tos in 0x10/0x1e 0xb8/0xfc 0xc0/0xfc 0xe0/0xfc; do
        "${tcx[@]}" filter add dev "$dev" parent 1: protocol ip prio 1 u32 \
          match ip tos "${tos%/*}" "${tos#*/}" flowid 1:10
      done ;;
    *) die "up: --qdisc tbf or prio" ;;
  esac
}

# True if the client namespace reaches the server's address: ping if installed, else a TCP
# connection to a closed port, which a reachable host refuses at once.
reachable() {
  if command -v ping >/dev/null 2>&1; then
    ip netns exec "$NS_CLI" ping -c1 -W2 "$SRV_IP" >/dev/null 2>&1
    return
  fi
  local msg
  msg=$(ip netns exec "$NS_CLI" timeout 3 bash -c "exec 3<>/dev/tcp/$SRV_IP/9" 2>&1) && return 0
  case $msg in *refused*) return 0 ;; *) return 1 ;; esac
}

cmd_up() {
  need_root
  RATE=1gbit BURST=64kb LIMIT=4mb QDISC=tbf
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
      --rate=*) RATE=${1#*=}; shift ;;
      --burst) BURST=${2:?--burst needs a value}; shift 2 ;;
      --burst=*) BURST=${1#*=}; shift ;;
      --limit) LIMIT=${2:?--limit needs a value}; shift 2 ;;
      --limit=*) LIMIT=${1#*=}; shift ;;
      --qdisc) QDISC=${2:?--qdisc needs a value}; shift 2 ;;
      --qdisc=*) QDISC=${1#*=}; shift ;;
      *) die "up: unknown option $1 (--rate R --burst B --limit L --qdisc Q)" ;;
    esac
  done
  command -v ip >/dev/null && command -v tc >/dev/null || die "needs ip and tc (iproute2)"
  # Leftovers of a crashed run go first.
  cmd_down
  # A half-built lab is removed again.
  trap 'cmd_down' ERR
  ip netns add "$NS_SRV"
  ip netns add "$NS_CLI"
  ip link add "$VETH_SRV" netns "$NS_SRV" type veth peer name "$VETH_CLI" netns "$NS_CLI"
  local ns dev ip
  for ns in "$NS_SRV" "$NS_CLI"; do
    ip netns exec "$ns" ip link set lo up
    # No IPv6 on the lab link: no neighbour discovery chatter in the shaped queue.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  done
  ip -n "$NS_SRV" addr add "$SRV_IP/$PREFIX" dev "$VETH_SRV"
  ip -n "$NS_CLI" addr add "$CLI_IP/$PREFIX" dev "$VETH_CLI"
  ip -n "$NS_SRV" link set "$VETH_SRV" up
  ip -n "$NS_CLI" link set "$VETH_CLI" up
  shape "$NS_SRV" "$VETH_SRV"
  shape "$NS_CLI" "$VETH_CLI"
  # The link must work before anyone relies on it.
  reachable || { cmd_down; die "up: $CLI_IP cannot reach $SRV_IP"; }
  trap - ERR
  echo "netlab: up: $NS_SRV ($SRV_IP) <-> $NS_CLI ($CLI_IP): $QDISC rate $RATE burst $BURST limit $LIMIT"
}

cmd_status() {
  local ns dev
  if ! is_up; then
    echo "netlab: down"
    return 0
  fi
  for ns in "$NS_SRV" "$NS_CLI"; do
    if [ "$ns" = "$NS_SRV" ]; then dev=$VETH_SRV; else dev=$VETH_CLI; fi
    echo "== $ns"
    ip -n "$ns" -br addr show dev "$dev"
    ip netns exec "$ns" tc -s qdisc show dev "$dev" | sed 's/^/   /'
    echo "   processes: $(ip netns pids "$ns" | tr '\n' ' ')"
    ip netns exec "$ns" ss -tni state established 2>/dev/null | sed 's/^/   /' || true
  done
}

# The server and client commands run in the foreground with a trap that kills the child on
# exit or signal, so an interrupted run leaves no process in the namespace.
CHILD=
kill_child() {
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
}

run_in() {
  local ns=$1
  shift
  is_up || die "the lab is down: run '$0 up' first"
  trap kill_child EXIT
  trap 'kill_child; exit 130' INT
  trap 'kill_child; exit 143' TERM
  ip netns exec "$ns" "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=
  return $rc
}

cmd_run_server() {
  need_root
  [ -x "$PAGE_SERVER" ] || die "no page-server at $PAGE_SERVER (cargo build --release -p page-server)"
  local a has_listen=0
  for a in "$@"; do
    case $a in --listen | --listen=*) has_listen=1 ;; esac
  done
  if [ $has_listen -eq 0 ]; then
    set -- --listen "$SRV_IP:$PORT" "$@"
  fi
  run_in "$NS_SRV" "$PAGE_SERVER" "$@"
}

cmd_run_client() {
  need_root
  [ -x "$FAULT_CLIENT" ] || die "no fault-client at $FAULT_CLIENT (cargo build --release -p fault-client)"
  run_in "$NS_CLI" "$FAULT_CLIENT" "$@"
}

cmd_exec() {
  need_root
  local which=${1:-}
  shift || true
  case $which in
    srv | server) run_in "$NS_SRV" "$@" ;;
    cli | client) run_in "$NS_CLI" "$@" ;;
    *) die "exec: srv or cli, then a command" ;;
  esac
}

ONCE_UP=0 ONCE_PID= ONCE_OUT=
cleanup_once() {
  if [ -n "$ONCE_PID" ]; then
    kill -TERM "$ONCE_PID" 2>/dev/null || true
    wait "$ONCE_PID" 2>/dev/null || true
  fi
  [ -z "$ONCE_OUT" ] || rm -f "$ONCE_OUT"
  if [ "$ONCE_UP" -eq 1 ]; then cmd_down; fi
}

# One shot: brings the lab up if needed, starts the server, runs the client, stops the
# server, and takes the lab down again if it brought it up (trap on exit, also on Ctrl-C).
cmd_once() {
  need_root
  local up_args=() server_args=() client_args=() seen_sep=0
  while [ $# -gt 0 ]; do
    case $1 in
      --rate | --burst | --limit | --qdisc) up_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
      --) seen_sep=1; shift; client_args=("$@"); break ;;
      *) server_args+=("$1"); shift ;;
    esac
  done
  [ $seen_sep -eq 1 ] || die "once: [--rate R] SERVER ARGS... -- CLIENT ARGS..."
  # Globals: the exit trap runs after this function has returned.
  ONCE_UP=0 ONCE_PID= ONCE_OUT=$(mktemp)
  trap cleanup_once EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if ! is_up; then
    cmd_up "${up_args[@]}"
    ONCE_UP=1
  elif [ ${#up_args[@]} -gt 0 ]; then
    die "once: the lab is already up; take it down to change its shaping"
  fi
  ip netns exec "$NS_SRV" "$PAGE_SERVER" --listen "$SRV_IP:$PORT" "${server_args[@]}" >"$ONCE_OUT" &
  ONCE_PID=$!
  local i
  for i in $(seq 1 100); do
    grep -q '^listening on' "$ONCE_OUT" && break
    kill -0 "$ONCE_PID" 2>/dev/null || die "once: page-server exited"
    sleep 0.05
  done
  grep -q '^listening on' "$ONCE_OUT" || die "once: page-server did not start"
  ip netns exec "$NS_CLI" "$FAULT_CLIENT" "${client_args[@]}"
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    run-server) cmd_run_server "$@" ;;
    run-client) cmd_run_client "$@" ;;
    exec) cmd_exec "$@" ;;
    once) cmd_once "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
