#!/usr/bin/env bash
# The real engines under Broadside's tests and local cluster, started from
# Maven Central's jars (no Docker): Apache Kafka as one combined KRaft broker
# and controller, and Apache Cassandra 5.0 as one CQL node (the database
# ScyllaDB keeps protocol- and language-compatible with).
#
#   deploy/local/engines.sh kafka|cql up       fetch the jars once, configure, start, wait until it answers
#   deploy/local/engines.sh kafka|cql down     stop it (SIGTERM, then SIGKILL after 30 s); its data stays
#   deploy/local/engines.sh kafka|cql status   running or not, and what it answers
#   deploy/local/engines.sh kafka|cql url      the URL Broadside's config takes
#   deploy/local/engines.sh kafka|cql wipe     stop it and delete its data
#
# Jars are cached in ~/.cache/broadside/engines/NAME-HASH (HASH: the pom's
# digest, so editing deploy/local/engines/NAME-pom.xml fetches again). State
# lives in $BROADSIDE_ENGINES_DIR (default /tmp/broadside-engines)/NAME.
# Ports: BROADSIDE_KAFKA_PORT (default 19092; the controller takes the next
# one), BROADSIDE_CQL_PORT (default 19042; the storage port is 7000 + the
# offset from 9042). Cassandra's heap: BROADSIDE_CQL_HEAP (default 1G).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CONF="$HERE/engines"
STATE="${BROADSIDE_ENGINES_DIR:-/tmp/broadside-engines}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/broadside/engines"
KAFKA_PORT="${BROADSIDE_KAFKA_PORT:-19092}"
CQL_PORT="${BROADSIDE_CQL_PORT:-19042}"

log() { echo "engines: $*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Prints the path of a java whose major version is in [min, max].
find_java() {
  local min="$1" max="$2" candidate major
  for candidate in "${BROADSIDE_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" \
      /usr/lib/jvm/java-17-openjdk-amd64/bin/java /usr/lib/jvm/java-21-openjdk-amd64/bin/java; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    major="$("$candidate" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    major="${major#1.}"
    if [ -n "$major" ] && [ "$major" -ge "$min" ] && [ "$major" -le "$max" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

ensure_tools() {
  local missing=()
  find_java 17 23 >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v python3 >/dev/null || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Gathers NAME's jars with Maven into the cache (once) and prints the directory.
jars() {
  local name="$1" pom="$CONF/$1-pom.xml" dir
  dir="$CACHE/$name-$(sha256sum "$pom" | cut -c1-12)"
  if [ ! -f "$dir/.complete" ]; then
    ensure_tools
    log "fetching $name's jars from Maven Central into $dir (once)"
    rm -rf "$dir" && mkdir -p "$dir/lib"
    if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dir/lib" >"$dir/mvn.log" 2>&1; then
      tail -n 30 "$dir/mvn.log" >&2
      die "Maven could not gather $name's jars (the whole log: $dir/mvn.log)"
    fi
    touch "$dir/.complete"
  fi
  echo "$dir/lib"
}

pid_file() { echo "$STATE/$1/pid"; }
running() { local pid; pid="$(cat "$(pid_file "$1")" 2>/dev/null || true)"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
log_file() { case "$1" in kafka) echo "$STATE/kafka/broker.log" ;; cql) echo "$STATE/cql/cassandra.log" ;; esac; }
address() { case "$1" in kafka) echo "127.0.0.1:$KAFKA_PORT" ;; cql) echo "127.0.0.1:$CQL_PORT" ;; esac; }
probe() { python3 "$CONF/probe.py" "$1" "$(address "$1")"; }

fail_with_logs() {
  local name="$1" message="$2" file; file="$(log_file "$name")"
  log "$message; the last lines of $file:"
  tail -n 40 "$file" >&2 2>/dev/null || true
  log "the whole log: $file"
  exit 1
}

configure_kafka() {
  local dir="$STATE/kafka" controller=$((KAFKA_PORT + 1))
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
# One combined KRaft broker and controller for tests and the local cluster.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=12
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
PROPS
}

start_kafka() {
  local lib java dir="$STATE/kafka"
  lib="$(jars kafka)"
  java="$(find_java 17 99)" || die "Kafka needs Java 17 or newer"
  configure_kafka
  local cp=("-cp" "$lib/*" "-Dlog4j2.configurationFile=$CONF/log4j2.properties")
  if [ ! -f "$dir/data/meta.properties" ]; then
    local id; id="$("$java" "${cp[@]}" kafka.tools.StorageTool random-uuid 2>>"$dir/broker.log" | tail -1)"
    "$java" "${cp[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >>"$dir/broker.log" 2>&1 ||
      fail_with_logs kafka "formatting the log directory failed"
  fi
  nohup "$java" -Xms256m -Xmx768m -XX:+UseG1GC "${cp[@]}" kafka.Kafka "$dir/server.properties" \
    >>"$dir/broker.log" 2>&1 &
  echo $! >"$(pid_file kafka)"
}

configure_cql() {
  local dir="$STATE/cql" storage=$((7000 + CQL_PORT - 9042))
  mkdir -p "$dir/data" "$dir/commitlog" "$dir/saved_caches" "$dir/hints" "$dir/cdc_raw"
  # Unknown keys are fatal to Cassandra: every key here is one of 5.0's.
  cat >"$dir/cassandra.yaml" <<YAML
# One Apache Cassandra 5.0 node for tests and the local cluster.
cluster_name: broadside-local
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $CQL_PORT
start_native_transport: true
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
storage_compatibility_mode: NONE
# Test-friendly: dropping a test keyspace takes no snapshot.
auto_snapshot: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
YAML
}

start_cql() {
  local lib java dir="$STATE/cql" options
  lib="$(jars cassandra)"
  # From Java 24 Cassandra 5.0's security-manager call throws.
  java="$(find_java 17 23)" || die "Cassandra 5.0 needs Java 17 to 23 (set BROADSIDE_JAVA)"
  configure_cql
  mapfile -t options < <(grep -v '^#' "$CONF/jvm17-cassandra.options" | sed '/^$/d')
  nohup "$java" -Xms"${BROADSIDE_CQL_HEAP:-1G}" -Xmx"${BROADSIDE_CQL_HEAP:-1G}" "${options[@]}" \
    -Dcassandra.config="file://$dir/cassandra.yaml" -Dcassandra-foreground=yes \
    -Dcassandra.storagedir="$dir" -Dcassandra.logdir="$dir" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.initial_token=0 \
    -Dlogback.configurationFile="$CONF/logback.xml" \
    -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon >>"$dir/cassandra.log" 2>&1 &
  echo $! >"$(pid_file cql)"
}

cmd_up() {
  local name="$1" limit
  mkdir -p "$STATE/$name"
  if running "$name" && probe "$name" >/dev/null 2>&1; then
    log "$name already up at $(address "$name"): $(probe "$name")"
    return
  fi
  running "$name" || "start_$name"
  limit=$([ "$name" = cql ] && echo 180 || echo 90)
  local started=$SECONDS answer
  until answer="$(probe "$name" 2>/dev/null)"; do
    running "$name" || fail_with_logs "$name" "$name exited while starting"
    [ $((SECONDS - started)) -lt "$limit" ] || fail_with_logs "$name" "$name did not answer within ${limit}s"
    sleep 1
  done
  log "$name up at $(address "$name") in $((SECONDS - started))s (pid $(cat "$(pid_file "$name")")): $answer"
}

cmd_down() {
  local name="$1" pid
  pid="$(cat "$(pid_file "$name")" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in 30 s, killing"; kill -KILL "$pid" || true; fi
  fi
  rm -f "$(pid_file "$name")"
  log "$name down"
}

cmd_status() {
  local name="$1"
  if running "$name"; then
    echo "$name running pid $(cat "$(pid_file "$name")") at $(address "$name"): $(probe "$name" 2>&1 || true)"
  else
    echo "$name stopped (state in $STATE/$name, log $(log_file "$name"))"
    return 3
  fi
}

cmd_url() {
  case "$1" in
    kafka) echo "kafka://$(address kafka)" ;;
    cql) echo "scylla://$(address cql)/broadside?dc=datacenter1&rf=1" ;;
  esac
}

name="${1:-}"; action="${2:-}"
case "$name" in kafka | cql) ;; *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac
case "$action" in
  up) cmd_up "$name" ;;
  down) cmd_down "$name" ;;
  status) cmd_status "$name" ;;
  url) cmd_url "$name" ;;
  wipe) cmd_down "$name"; rm -rf "${STATE:?}/$name"; log "$name wiped" ;;
  *) die "unknown action '$action' (up, down, status, url, wipe)" ;;
esac
