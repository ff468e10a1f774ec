#!/usr/bin/env bash
# A whole Broadside cluster as processes on this machine, in the shape it is
# deployed: Apache Kafka as the bus and a CQL database (Apache Cassandra 5.0,
# or the ScyllaDB node BROADSIDE_CLUSTER_CQL_URI names) as the store, both
# started by deploy/local/engines.sh; each role as its own
# `broadside serve --roles X`; and N sender replicas, all on loopback.
#
#   deploy/local/cluster.sh up [--senders N] [--smtp URL]   start everything
#   deploy/local/cluster.sh scale senders N                 add or remove senders
#   deploy/local/cluster.sh kill-sender [I]                 SIGKILL sender I (default: the last)
#   deploy/local/cluster.sh restart-sender I                SIGTERM sender I, wait for its drain, start it again
#   deploy/local/cluster.sh stop-broker | start-broker      take Kafka away and bring it back
#   deploy/local/cluster.sh stop-store | start-store        take the CQL node away and bring it back
#   deploy/local/cluster.sh status                          processes, endpoints, health
#   deploy/local/cluster.sh statements                      store statements sent so far by kind, and ambiguous sends, all processes
#   deploy/local/cluster.sh down                            stop the cluster and drop its keyspace
#
# Everything lives in $BROADSIDE_CLUSTER_DIR (default /tmp/broadside-cluster):
# logs/NAME.log, pids/NAME.pid and config.toml. Ports start at
# $BROADSIDE_CLUSTER_PORT_BASE (default 19000). The engines are shared by
# every cluster on the machine (`deploy/local/engines.sh kafka|cql down` stops
# them); a cluster's topics are prefixed and its keyspace named after its
# port base. BROADSIDE_CLUSTER_STORE=sqlite puts every process on one shared
# SQLite file instead (a shape nobody deploys; for comparison only).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${BROADSIDE_CLUSTER_DIR:-/tmp/broadside-cluster}"
BASE="${BROADSIDE_CLUSTER_PORT_BASE:-19000}"
BIN="${BROADSIDE_BIN:-$ROOT/target/release/broadside}"
ENGINES="$ROOT/deploy/local/engines.sh"
PROBE="$ROOT/deploy/local/engines/probe.py"
STORE_KIND="${BROADSIDE_CLUSTER_STORE:-cql}"
KEYSPACE="broadside_c$BASE"
ROLES=(subscribers segmentation dispatch feedback)

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

grpc_port() { # role index -> port
  case "$1" in
    subscribers) echo $((BASE + 1)) ;; segmentation) echo $((BASE + 2)) ;;
    dispatch) echo $((BASE + 3)) ;; feedback) echo $((BASE + 4)) ;;
    sender-*) echo $((BASE + 100 + ${1#sender-})) ;;
  esac
}
admin_port() { echo $(($(grpc_port "$1") + 400)); }

pid_of() { cat "$DIR/pids/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

wait_port() { # port name; up to 60 s (a loaded machine starts slowly), then the log's tail
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$2 did not listen on port $1 within 60 s; the end of $DIR/logs/$2.log:"
  tail -n 30 "$DIR/logs/$2.log" >&2 2>/dev/null || true
  die "$2 did not start"
}

ensure_binary() {
  [ -x "$BIN" ] && return
  log "building $BIN"
  (cd "$ROOT" && cargo build --release -p broadside >&2)
}

start_broker() { "$ENGINES" kafka up; }

# The CQL node: a ScyllaDB node named by BROADSIDE_CLUSTER_CQL_URI
# (scylla://HOST:PORT/any?dc=DC; the keyspace is replaced), else the local
# Apache Cassandra of engines.sh.
start_store() {
  [ "$STORE_KIND" = cql ] || return 0
  [ -n "${BROADSIDE_CLUSTER_CQL_URI:-}" ] || "$ENGINES" cql up
}

store_url() {
  case "$STORE_KIND" in
    sqlite) echo "sqlite://$DIR/data/broadside.db" ;;
    cql)
      local base="${BROADSIDE_CLUSTER_CQL_URI:-$("$ENGINES" cql url)}"
      python3 -c 'import sys, urllib.parse as p; u = p.urlsplit(sys.argv[1]); print(p.urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, "")))' \
        "$base" "$KEYSPACE" ;;
    *) die "BROADSIDE_CLUSTER_STORE must be cql or sqlite, not $STORE_KIND" ;;
  esac
}

# host:port of the first CQL node, for the few statements this script runs itself.
cql_address() { store_url | sed 's|^scylla://\([^,/]*\).*|\1|'; }

# Starts one `broadside serve` process. $1 is the name (a role or sender-I).
start_node() {
  local name="$1" roles="$1"
  [[ "$name" == sender-* ]] && roles=sender
  alive "$name" && return
  BROADSIDE_CONFIG="$DIR/config.toml" \
  BROADSIDE__SERVER__GRPC_ADDR="127.0.0.1:$(grpc_port "$name")" \
  BROADSIDE__SERVER__ADMIN_ADDR="127.0.0.1:$(admin_port "$name")" \
  BROADSIDE__SERVER__HTTP_ADDR="127.0.0.1:$(( $(grpc_port "$name") + 600 ))" \
  BROADSIDE__FEEDBACK__INBOUND_ADDR="127.0.0.1:$(( $(grpc_port "$name") + 700 ))" \
  BROADSIDE__SENDER__ID="$name" \
    nohup "$BIN" serve --roles "$roles" >>"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name.pid"
  wait_port "$(admin_port "$name")" "$name"
  log "$name up: grpc 127.0.0.1:$(grpc_port "$name") admin 127.0.0.1:$(admin_port "$name") (pid $(pid_of "$name"))"
}

# "lwt write read batch ambiguous": the store statements process NAME has sent,
# and the sends it could not prove were not repeated (from its /metrics).
scrape_statements() {
  curl -s --max-time 5 "http://127.0.0.1:$(admin_port "$1")/metrics" 2>/dev/null | awk '
    /^broadside_store_statements_total\{/ { match($0, /kind="[a-z]+"/); kind = substr($0, RSTART + 6, RLENGTH - 7); n[kind] = $NF }
    /^broadside_sends_ambiguous_total / { ambiguous = $NF }
    END { printf "%d %d %d %d %d\n", n["lwt"], n["write"], n["read"], n["batch"], ambiguous }'
}

# Keeps what a process has sent before it goes away, so `statements` still counts it
# (what it sends between this scrape and its exit is missed).
remember_statements() { scrape_statements "$1" >>"$DIR/statements.gone" || true; }

cmd_statements() {
  { for name in $(ls "$DIR/pids" 2>/dev/null | sed 's/\.pid$//'); do alive "$name" && scrape_statements "$name"; done
    cat "$DIR/statements.gone" 2>/dev/null || true
  } | awk '{ l += $1; w += $2; r += $3; b += $4; a += $5 } END { printf "lwt=%d write=%d read=%d batch=%d ambiguous=%d\n", l, w, r, b, a }'
}

# SIGTERM, then wait up to $2 seconds for the drain before SIGKILL.
stop_node() {
  local name="$1" grace="${2:-60}" pid
  pid="$(pid_of "$name")"
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null && remember_statements "$name"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in ${grace}s, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$DIR/pids/$name.pid"
}

senders() { ls "$DIR/pids" 2>/dev/null | sed -n 's/^\(sender-[0-9]*\)\.pid$/\1/p' | sort -t- -k2 -n; }

write_config() {
  local smtp="$1" senders_concurrency="${BROADSIDE_CLUSTER_SENDER_CONCURRENCY:-32}"
  cat >"$DIR/config.toml" <<EOF
data_dir = "$DIR/data"

[store]
url = "$(store_url)"

[bus]
url = "$("$ENGINES" kafka url)"
topic_prefix = "broadside.c$BASE."
partitions = ${BROADSIDE_CLUSTER_PARTITIONS:-12}
session_timeout_ms = 6000
assignment_strategy = "${BROADSIDE_CLUSTER_ASSIGNMENT:-cooperative-sticky}"

[smtp]
url = "$smtp"
starttls = "none"

[sender]
concurrency = $senders_concurrency
drain_timeout_secs = 30
lease_secs = ${BROADSIDE_CLUSTER_LEASE_SECS:-15}
retry_base_secs = ${BROADSIDE_CLUSTER_RETRY_BASE_SECS:-2}

[dispatch]
reconcile_after_secs = ${BROADSIDE_CLUSTER_RECONCILE_SECS:-30}

[mail]
token_key = "local-cluster-$(date +%s%N)"
EOF
}

cmd_up() {
  local senders=1 smtp=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --senders) senders="$2"; shift 2 ;;
      --smtp) smtp="$2"; shift 2 ;;
      *) die "up: unknown option $1" ;;
    esac
  done
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/data"
  [ -n "$smtp" ] || smtp="capture://$DIR/outbox"
  ensure_binary
  start_broker
  start_store
  [ -f "$DIR/config.toml" ] || write_config "$smtp"
  BROADSIDE_CONFIG="$DIR/config.toml" "$BIN" migrate >>"$DIR/logs/migrate.log" 2>&1 || {
    tail -n 20 "$DIR/logs/migrate.log" >&2; die "migrate failed (see $DIR/logs/migrate.log)"; }
  for role in "${ROLES[@]}"; do start_node "$role" & done
  for i in $(seq 1 "$senders"); do start_node "sender-$i" & done
  wait
  log "up: $(ls "$DIR/pids" | wc -l) processes on $(store_url | sed 's/?.*//'); subscribers at http://127.0.0.1:$(grpc_port subscribers), dispatch at http://127.0.0.1:$(grpc_port dispatch)"
}
cmd_scale() {
  [ "${1:-}" = senders ] || die "usage: scale senders N"
  local want="$2" have
  have="$(senders | wc -l)"
  if [ "$want" -gt "$have" ]; then
    local next; next=$(( $(senders | tail -1 | sed 's/sender-//;s/^$/0/') + 1 ))
    for _ in $(seq 1 $((want - have))); do start_node "sender-$next" & next=$((next + 1)); done
    wait
  else
    for name in $(senders | tail -n $((have - want))); do stop_node "$name" & done
    wait
  fi
  log "senders: $(senders | tr '\n' ' ')"
}

# Prints the number of claims the sender held unfinished when it died: the
# messages that were in flight and may be sent again by whoever takes over.
in_flight_claims() {
  if [ "$STORE_KIND" = cql ]; then
    # A scan of the whole ledger (ALLOW FILTERING): fine for a test cluster, never in Broadside itself.
    python3 "$PROBE" cql "$(cql_address)" \
      "SELECT count(*) FROM $KEYSPACE.send_ledger WHERE owner = '$1' AND state = 'claimed' ALLOW FILTERING"
    return
  fi
  python3 - "$DIR/data/broadside.db" "$1" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
print(db.execute("SELECT count(*) FROM send_ledger WHERE owner = ? AND state = 'claimed'", (sys.argv[2],)).fetchone()[0])
EOF
}

cmd_kill_sender() {
  local name="sender-${1:-}"
  [ -n "${1:-}" ] || name="$(senders | tail -1)"
  [ -n "$name" ] && alive "$name" || die "no running sender to kill"
  remember_statements "$name"
  kill -KILL "$(pid_of "$name")"
  rm -f "$DIR/pids/$name.pid"
  sleep 0.2
  echo "killed $name in_flight=$(in_flight_claims "$name")"
}

cmd_restart_sender() {
  local name="sender-$1" started
  started=$(date +%s.%N)
  stop_node "$name" 60
  echo "drained $name in $(python3 -c "import time; print(f'{time.time() - $started:.2f}')")s"
  start_node "$name"
}

cmd_status() {
  for file in "$DIR"/pids/*.pid; do
    [ -e "$file" ] || continue
    local name ready state=dead
    name="$(basename "$file" .pid)"
    alive "$name" && state=running
    ready="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(admin_port "$name")/readyz" 2>/dev/null || true)"
    printf '%-14s %-8s pid %-7s grpc 127.0.0.1:%s admin 127.0.0.1:%s ready=%s\n' "$name" "$state" "$(pid_of "$name")" \
      "$(grpc_port "$name")" "$(admin_port "$name")" "$ready"
  done
  "$ENGINES" kafka status || true
  if [ "$STORE_KIND" = cql ]; then
    [ -n "${BROADSIDE_CLUSTER_CQL_URI:-}" ] || "$ENGINES" cql status || true
  fi
  echo "store: $(store_url)"
  echo "logs: $DIR/logs"
}

cmd_down() {
  for name in $(senders); do stop_node "$name" 60 & done
  wait
  for role in "${ROLES[@]}"; do stop_node "$role" 30 & done
  wait
  if [ "$STORE_KIND" = cql ] && [ "${BROADSIDE_CLUSTER_KEEP_KEYSPACE:-0}" != 1 ]; then
    python3 "$PROBE" cql "$(cql_address)" "DROP KEYSPACE IF EXISTS $KEYSPACE" >/dev/null ||
      log "could not drop keyspace $KEYSPACE (is the CQL node up?)"
  fi
  log "down (the engines keep running: deploy/local/engines.sh kafka|cql down)"
}

local_store_only() {
  [ "$STORE_KIND" = cql ] && [ -z "${BROADSIDE_CLUSTER_CQL_URI:-}" ] || die "only the local CQL node of engines.sh can be stopped and started"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  scale) shift; cmd_scale "$@" ;;
  kill-sender) shift; cmd_kill_sender "$@" ;;
  restart-sender) shift; cmd_restart_sender "$@" ;;
  stop-broker) "$ENGINES" kafka down ;;
  start-broker) start_broker ;;
  stop-store) local_store_only; "$ENGINES" cql down ;;
  start-store) local_store_only; start_store ;;
  status) cmd_status ;;
  statements) cmd_statements ;;
  down) cmd_down ;;
  *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
