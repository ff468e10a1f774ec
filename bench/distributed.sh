#!/usr/bin/env bash
# Runs one campaign through a local cluster (deploy/local/cluster.sh) into a
# real SMTP receiver that records every message (Postfix's smtp-sink), applies
# a fault mid-campaign, and counts Message-IDs at the receiver.
#
#   bench/distributed.sh --recipients N --senders K
#       [--scale-to M | --kill-one | --restart-each | --broker-outage SECS
#        | --store-outage SECS | --defer-domain DOMAIN --defer-secs SECS]
#       [--rate MSGS_PER_S] [--ceiling] [--timeout SECS]
#
# The cluster runs on Apache Kafka and the CQL store (deploy/local/engines.sh
# starts them when they are not up); BROADSIDE_CLUSTER_STORE=sqlite runs it on
# one shared SQLite file instead.
#
# --defer-domain puts a real Postfix in front of the sink that answers 421
# for DOMAIN until SECS have passed. --ceiling also pushes the same number of
# messages of the same size with smtp-source into the same receiver, over
# reused connections, and prints the ratio.
#
# Last line:
# distributed: recipients=N delivered=<unique> lost=<n> duplicates=<n> in_flight_at_fault=<n> seconds=<s> msgs_per_s=<r>
#   completed=1|0 redispatched=<n> store=cql|sqlite broker=kafka ambiguous=<n> lwt_per_msg=<r> statements_per_msg=<r>
#   reads_per_msg=<r> writes_per_msg=<r> batches_per_msg=<r>
# (statements: every store statement every process sent from the campaign's
# start to its completion, divided by the recipients; a killed process counts
# up to its last scrape, just before the kill. in_flight_at_fault: for
# --kill-one the killed sender's unfinished claims in the ledger; for an
# outage the claims the fault left unfinished, which the senders took over
# and counted as ambiguous: a duplicate beyond them is one nobody counted.)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TIMEOUT=600 RECIPIENTS=10000 SENDERS=1 FAULT=none SCALE_TO=0 OUTAGE=0 DEFER_DOMAIN="" DEFER_SECS=0 RATE=0 CEILING=0
while [ $# -gt 0 ]; do
  case "$1" in
    --recipients) RECIPIENTS="$2"; shift 2 ;;
    --senders) SENDERS="$2"; shift 2 ;;
    --scale-to) FAULT=scale; SCALE_TO="$2"; shift 2 ;;
    --kill-one) FAULT=kill; shift ;;
    --restart-each) FAULT=restart; shift ;;
    --broker-outage) FAULT=outage; OUTAGE="$2"; shift 2 ;;
    --store-outage) FAULT=store_outage; OUTAGE="$2"; shift 2 ;;
    --defer-domain) FAULT=defer; DEFER_DOMAIN="$2"; shift 2 ;;
    --defer-secs) DEFER_SECS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --ceiling) CEILING=1; shift ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; sed -n '2,28p' "$0" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d /tmp/broadside-bench.XXXXXX)"
chmod 0755 "$WORK" # smtp-sink writes as nobody
export BROADSIDE_CLUSTER_DIR="$WORK/cluster"
export BROADSIDE_CLUSTER_PORT_BASE="${BROADSIDE_CLUSTER_PORT_BASE:-$((20000 + RANDOM % 20000))}"
CLUSTER="$ROOT/deploy/local/cluster.sh"
STORE_KIND="${BROADSIDE_CLUSTER_STORE:-cql}"
BIN="${BROADSIDE_BIN:-$ROOT/target/release/broadside}"
SINK_DIR="$WORK/sink"
SINK_PORT=$((BROADSIDE_CLUSTER_PORT_BASE + 25))
POSTFIX_PORT=$((BROADSIDE_CLUSTER_PORT_BASE + 26))
PIDS=()

say() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

cleanup() {
  "$CLUSTER" down >/dev/null 2>&1 || true
  [ -f "$WORK/postfix/pid" ] && postfix -c "$WORK/postfix" stop >/dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

[ -x /usr/sbin/smtp-sink ] || { echo "smtp-sink missing: apt-get install postfix" >&2; exit 1; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p broadside >&2)

# The receiver: smtp-sink dumps every transaction to a file.
mkdir -p "$SINK_DIR" && chmod 0777 "$SINK_DIR"
/usr/sbin/smtp-sink -u nobody -d "$SINK_DIR/%H%M/" "127.0.0.1:$SINK_PORT" 1024 &
PIDS+=($!)
SMTP_URL="smtp://127.0.0.1:$SINK_PORT"
if [ "$FAULT" = defer ]; then
  "$ROOT/deploy/local/postfix-relay.sh" "$WORK/postfix" "$POSTFIX_PORT" "$SINK_PORT" "$DEFER_DOMAIN" >&2
  SMTP_URL="smtp://127.0.0.1:$POSTFIX_PORT"
fi

"$CLUSTER" up --senders "$SENDERS" --smtp "$SMTP_URL" >&2
# The subscribers node wrote the default tenant's admin key on its first start.
BROADSIDE_API_KEY="$(cat "$BROADSIDE_CLUSTER_DIR/data/admin.key")"
export BROADSIDE_API_KEY
SUBS="--server http://127.0.0.1:$((BROADSIDE_CLUSTER_PORT_BASE + 1))"
DISPATCH="--server http://127.0.0.1:$((BROADSIDE_CLUSTER_PORT_BASE + 3))"

LIST=$("$BIN" $SUBS lists create "bench $RECIPIENTS" | cut -f1)
loaded=$(now)
"$BIN" $SUBS subscribers add-sample --list "$LIST" --count "$RECIPIENTS" >&2
say "loaded $RECIPIENTS subscribers in $(elapsed "$loaded" "$(now)")s"
TEMPLATE=$("$BIN" $DISPATCH templates create --subject '{{ subscriber.display_name }}, your {{ subscriber.attributes.city }} digest' \
  --text "Hello {{ subscriber.display_name }},
$(printf 'Here is what happened in {{ subscriber.attributes.city }} this week. %.0s' $(seq 1 12))
Unsubscribe: {{ unsubscribe_url }}
{{ postal_address }}" | cut -f1)
CAMPAIGN=$("$BIN" $DISPATCH campaigns create --template "$TEMPLATE" --list "$LIST" --from digest@broadside.localhost \
  --postal-address "Broadside Bench, 1 Example Street, Springfield" \
  --max-per-second "$RATE" | cut -f1)
CAMPAIGN_ID="${CAMPAIGN#campaigns/}"

# Every call and wait is bounded: a stuck cluster fails with its logs instead of hanging CI.
stats() { timeout 30 "$BIN" $DISPATCH campaigns get "$CAMPAIGN" | sed 's/.*\t//'; }
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }
diagnose() { # why: what the cluster looked like when it got stuck
  say "$1"
  "$CLUSTER" status >&2 || true
  for log in "$BROADSIDE_CLUSTER_DIR"/logs/*.log; do echo "== $log (last 15 lines)" >&2; tail -n 15 "$log" >&2; done
  KEEP_WORK=1
}
wait_delivered() { # fraction of recipients, within 120 s (the fault comes early; TIMEOUT is for the rest)
  local target line until; target=$(python3 -c "print(int($RECIPIENTS * $1))"); until=$(( $(date +%s) + 120 ))
  while :; do
    line=$(stats || true)
    [ "$(echo "$line" | field delivered)" -ge "$target" ] 2>/dev/null && return 0
    if [ "$(date +%s)" -gt "$until" ]; then diagnose "fewer than $target delivered after 120s: $line"; exit 1; fi
    sleep 0.2
  done
}

STATEMENTS0=$("$CLUSTER" statements)
started=$(now)
"$BIN" $DISPATCH campaigns start "$CAMPAIGN" >&2
IN_FLIGHT=0 MAX_DRAIN=0
case "$FAULT" in
  scale) wait_delivered 0.1; say "scaling senders $SENDERS -> $SCALE_TO"; "$CLUSTER" scale senders "$SCALE_TO" >&2 ;;
  kill) wait_delivered 0.3; out=$("$CLUSTER" kill-sender); say "$out"; IN_FLIGHT=$(echo "$out" | sed -n 's/.*in_flight=\([0-9]*\).*/\1/p') ;;
  restart)
    wait_delivered 0.1
    for i in $(seq 1 "$SENDERS"); do
      if ! out=$("$CLUSTER" restart-sender "$i" 2>>"$WORK/restart.log" | sed -n 1p); then
        say "restarting sender-$i failed:"
        tail -n 30 "$WORK/restart.log" "$BROADSIDE_CLUSTER_DIR/logs/sender-$i.log" >&2 || true
        exit 1
      fi
      say "$out"
      MAX_DRAIN=$(python3 -c "print(max($MAX_DRAIN, float('$(echo "$out" | sed -n 's/.* in \([0-9.]*\)s$/\1/p')' or 0)))")
    done ;;
  outage | store_outage)
    wait_delivered 0.2
    what=broker; [ "$FAULT" = store_outage ] && what=store
    say "stopping the $what for ${OUTAGE}s"
    "$CLUSTER" "stop-$what" >&2; sleep "$OUTAGE"; "$CLUSTER" "start-$what" >&2 ;;
  defer)
    sleep "$DEFER_SECS"; say "lifting the 421 for $DEFER_DOMAIN after ${DEFER_SECS}s"
    "$ROOT/deploy/local/postfix-relay.sh" "$WORK/postfix" lift >&2 ;;
esac

deadline=$(( $(date +%s) + TIMEOUT )) COMPLETED=0
while :; do
  line=$(stats || true)
  case "$line" in *state=completed*) COMPLETED=1; break ;; esac
  if [ "$(date +%s)" -gt "$deadline" ]; then
    diagnose "campaign did not complete within ${TIMEOUT}s: $line (cluster kept in $WORK)"; break
  fi
  sleep 0.5
done
finished=$(now)
SECONDS_TAKEN=$(elapsed "$started" "$finished")
STATEMENTS1=$("$CLUSTER" statements)
AMBIGUOUS=$(( ${STATEMENTS1##*ambiguous=} - ${STATEMENTS0##*ambiguous=} ))
case "$FAULT" in outage | store_outage) IN_FLIGHT=$AMBIGUOUS ;; esac
# Jobs the dispatch reconciler had to send again because no sender took them (0 when none went astray).
REDISPATCHED=$(sed 's/\x1b\[[0-9;]*m//g' "$BROADSIDE_CLUSTER_DIR/logs/dispatch.log" | sed -n 's/.*resent=\([0-9]*\).*/\1/p' | awk '{ n += $1 } END { print n + 0 }')
say "campaign: $line"
DEFERRED=$(echo "$line" | sed -n 's/.*deferred=\([0-9]*\).*/\1/p')

# Let the receiver finish writing its last dumps (and Postfix its queue).
sleep 1
if [ "$FAULT" = defer ]; then
  for _ in $(seq 1 120); do [ -z "$(find "$WORK/postfix/queue/active" "$WORK/postfix/queue/incoming" "$WORK/postfix/queue/deferred" -type f 2>/dev/null | head -1)" ] && break; sleep 0.5; done
fi
read -r UNIQUE DUPLICATES < <(grep -rhi "^Message-ID: <$CAMPAIGN_ID\." "$SINK_DIR" | sort | uniq -c | awk '{u++; d += $1 - 1} END {print u + 0, d + 0}')
LOST=$((RECIPIENTS - UNIQUE))
RATE_MEASURED=$(python3 -c "print(f'{$UNIQUE / max($SECONDS_TAKEN, 0.001):.0f}')")

if [ "$CEILING" = 1 ]; then
  # Average size of our messages at the receiver (pipefail-safe: head closes the pipe early).
  SIZE=$( (find "$SINK_DIR" -type f | head -50 | xargs cat | wc -c) || true); SIZE=$((SIZE / 50))
  c_started=$(now)
  /usr/sbin/smtp-source -d -s 32 -m "$RECIPIENTS" -l "$SIZE" -f bench@localhost -t sink@localhost "127.0.0.1:$SINK_PORT"
  CEILING_RATE=$(python3 -c "print(f'{$RECIPIENTS / ($(now) - $c_started):.0f}')")
  echo "ceiling: smtp-source messages=$RECIPIENTS size=$SIZE msgs_per_s=$CEILING_RATE ratio=$(python3 -c "print(f'{$RATE_MEASURED / $CEILING_RATE:.2f}')")"
fi
if [ "$FAULT" = defer ]; then
  # When the last message of each group reached the receiver, from the campaign start.
  python3 - "$SINK_DIR" "$DEFER_DOMAIN" "$started" "$CAMPAIGN_ID" <<'EOF'
import os, sys
sink, domain, started, campaign = sys.argv[1], sys.argv[2].lower(), float(sys.argv[3]), sys.argv[4]
last = {"deferred": 0.0, "other": 0.0}
for root, _, files in os.walk(sink):
    for name in files:
        path = os.path.join(root, name)
        with open(path, errors="replace") as f:
            head = f.read(4096)
        if "<" + campaign + "." not in head:
            continue
        to = next((l for l in head.splitlines() if l.lower().startswith("to:")), "").lower()
        group = "deferred" if ("@" + domain) in to else "other"
        last[group] = max(last[group], os.path.getmtime(path) - started)
print(f"domains: other_domains_seconds={last['other']:.2f} deferred_domain_seconds={last['deferred']:.2f}")
EOF
fi
[ "$FAULT" = restart ] && echo "drains: max_drain_seconds=$MAX_DRAIN"
echo "campaign: deferred=${DEFERRED:-0}"
# Store statements per recipient, by kind and in all, from the campaign's start to its completion.
PER_MSG=$(python3 - "$STATEMENTS0" "$STATEMENTS1" "$RECIPIENTS" <<'EOF'
import sys
before, after = (dict(pair.split("=") for pair in line.split()) for line in sys.argv[1:3])
n = int(sys.argv[3])
per = {kind: (int(after[kind]) - int(before[kind])) / n for kind in ("lwt", "write", "read", "batch")}
print(f"lwt_per_msg={per['lwt']:.2f} statements_per_msg={sum(per.values()):.2f} "
      f"reads_per_msg={per['read']:.2f} writes_per_msg={per['write']:.2f} batches_per_msg={per['batch']:.2f}")
EOF
)
echo "distributed: recipients=$RECIPIENTS delivered=$UNIQUE lost=$LOST duplicates=$DUPLICATES in_flight_at_fault=$IN_FLIGHT seconds=$SECONDS_TAKEN msgs_per_s=$RATE_MEASURED completed=$COMPLETED redispatched=$REDISPATCHED store=$STORE_KIND broker=kafka ambiguous=$AMBIGUOUS $PER_MSG"
