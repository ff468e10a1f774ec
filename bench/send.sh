#!/usr/bin/env bash
# bench/send.sh N — one sender replica at this machine's limit, side by side
# with the transport ceiling and with Postfix, in one run.
#
#  1. Loads N subscribers (CLI import), a ~5 KB personal template, DKIM keys
#     (RSA-2048 and Ed25519), and fans a campaign out into N send jobs on the
#     embedded bus, with a node that has no sender role; then stops it.
#  2. Starts `broadside serve --roles sender` alone: it consumes the N jobs,
#     renders, signs with both algorithms and delivers to Postfix's smtp-sink
#     on loopback. Timed from its start to N delivered (its /metrics), with
#     its peak RSS.
#  3. smtp-source pushes N pre-built messages of the same size into the same
#     sink over reused connections (the transport ceiling here).
#  4. smtp-source pushes N messages into a real Postfix relaying to the same
#     sink, timed until Postfix's queue is empty.
#
# Last line:
# send: messages=<n> msgs_per_s=<r> ceiling_msgs_per_s=<r> ratio=<ours/ceiling> postfix_msgs_per_s=<r> vs_postfix=<ours/postfix> rss_mb=<m> cpu_ms_per_msg=<ms>
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N="${1:-100000}"
BIN="${BROADSIDE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/broadside}"
CONCURRENCY="${BROADSIDE_BENCH_CONCURRENCY:-200}"
WORK="$(mktemp -d /tmp/broadside-send-bench.XXXXXX)"
chmod 0755 "$WORK"
BASE=$((30000 + RANDOM % 20000))
GRPC=$BASE ADMIN=$((BASE + 1)) HTTP=$((BASE + 2)) SINK_PORT=$((BASE + 3)) POSTFIX_PORT=$((BASE + 4))
PIDS=()
say() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/postfix/main.cf" ] && "$ROOT/deploy/local/postfix-relay.sh" "$WORK/postfix" stop || true
  if [ -n "${KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
[ -x /usr/sbin/smtp-sink ] || { echo "smtp-sink missing: apt-get install postfix" >&2; exit 1; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p broadside >&2)

export BROADSIDE__DATA_DIR="$WORK/data" BROADSIDE__SERVER__GRPC_ADDR="127.0.0.1:$GRPC"
export BROADSIDE__SERVER__ADMIN_ADDR="127.0.0.1:$ADMIN" BROADSIDE__SERVER__HTTP_ADDR="127.0.0.1:$HTTP"
export BROADSIDE__SMTP__URL="smtp://127.0.0.1:$SINK_PORT" BROADSIDE__SMTP__STARTTLS=none
export BROADSIDE__SMTP__POOL_SIZE="$CONCURRENCY" BROADSIDE__SENDER__CONCURRENCY="$CONCURRENCY"
export BROADSIDE__MAIL__DOMAIN=bench.example
# The sink is one local process, not the mailbox providers the addresses name:
# the per-provider limits (sender.destinations) would measure our politeness
# towards Gmail, not the engine. Override with BROADSIDE__SENDER__DESTINATIONS.
export BROADSIDE__SENDER__DESTINATIONS="${BROADSIDE__SENDER__DESTINATIONS:-[]}"
export BROADSIDE__SENDER__DESTINATION_CONCURRENCY="${BROADSIDE__SENDER__DESTINATION_CONCURRENCY:-0}"
CLI=("$BIN" --server "http://127.0.0.1:$GRPC")

# The receiver: counts, keeps nothing (-c prints nothing without a tty).
/usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 &
PIDS+=($!)

say "generating $N subscribers and a 5 KB template"
python3 - "$N" "$WORK" <<'PYEOF'
import random, sys
n, work = int(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
domains = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "gmx.de", "orange.fr", "example.org"]
firsts = ["ada", "alan", "grace", "edsger", "barbara", "donald", "margaret", "ken"]
with open(f"{work}/subscribers.csv", "w") as f:
    f.write("email,name,city,plan,score:number\n")
    for i in range(n):
        first = rng.choice(firsts)
        f.write(f"{first}.{i:x}@{rng.choice(domains)},{first.title()} Number{i},{rng.choice(['Paris','Oslo','Rome'])},{rng.choice(['free','pro'])},{i % 100}\n")
para = ("<p>Hello {{ subscriber.display_name }}, this week in {{ subscriber.attributes.city }} we have news for "
        "{{ subscriber.attributes.plan }} members. Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
        "eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud.</p>\n")
html = "<html><body><h1>Weekly digest</h1>\n" + para * 11 + \
       "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> &middot; {{ postal_address }}</p></body></html>\n"
text = "Weekly digest for {{ subscriber.display_name }} ({{ subscriber.attributes.city }})\n\n" + \
       ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.\n" * 12) + \
       "Unsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}\n"
open(f"{work}/body.html", "w").write(html)
open(f"{work}/body.txt", "w").write(text)
PYEOF
"$BIN" dkim keygen --domain bench.example --selector b1 >/dev/null

say "phase 1: load and fan out (node without a sender)"
"$BIN" serve --roles subscribers,dispatch >"$WORK/load.log" 2>&1 &
LOAD_PID=$!; PIDS+=($LOAD_PID)
for _ in $(seq 1 300); do [ -f "$WORK/data/admin.key" ] && (echo >/dev/tcp/127.0.0.1/$GRPC) 2>/dev/null && break; sleep 0.1; done
LIST=$("${CLI[@]}" lists create "send bench" | cut -f1)
"${CLI[@]}" subscribers import "$WORK/subscribers.csv" --list "$LIST" >/dev/null
TEMPLATE=$("${CLI[@]}" templates create --subject "Digest for {{ subscriber.display_name }}" \
  --html-file "$WORK/body.html" --text-file "$WORK/body.txt" | cut -f1)
CAMPAIGN=$("${CLI[@]}" campaigns create --template "$TEMPLATE" --list "$LIST" --from news@bench.example \
  --from-name "Bench News" --postal-address "1 Bench Street, Testville" | cut -f1)
"${CLI[@]}" campaigns start "$CAMPAIGN" >/dev/null
for _ in $(seq 1 600); do
  grep -q "broadside_campaign_recipients_fanned_out_total $N" <(curl -s "127.0.0.1:$ADMIN/metrics") && break
  sleep 0.5
done
grep -q "broadside_campaign_recipients_fanned_out_total $N" <(curl -s "127.0.0.1:$ADMIN/metrics") \
  || { echo "fan-out did not reach $N (see $WORK/load.log)" >&2; exit 1; }
kill "$LOAD_PID"; wait "$LOAD_PID" 2>/dev/null || true

say "phase 2: one sender replica consumes $N jobs (concurrency $CONCURRENCY)"
started=$(now)
${BROADSIDE_BENCH_WRAP:-} "$BIN" serve --roles sender >"$WORK/sender.log" 2>&1 &
SENDER_PID=$!; PIDS+=($SENDER_PID)
delivered=0
for _ in $(seq 1 36000); do
  # Summed over its labels (tenant, campaign, destination group).
  delivered=$( (curl -s "127.0.0.1:$ADMIN/metrics" || true) | awk '/^broadside_sends_total\{/ && /outcome="delivered"/ { n += $NF } END { print n + 0 }')
  [ "${delivered:-0}" -ge "$N" ] && break
  kill -0 "$SENDER_PID" 2>/dev/null || { echo "sender exited (see $WORK/sender.log)" >&2; exit 1; }
  sleep 0.05
done
ours_seconds=$(python3 -c "print($(now) - $started)")
rss_kb=$(sed -n 's/^VmHWM:\s*\([0-9]*\).*/\1/p' "/proc/$SENDER_PID/status")
cpu=$(python3 -c "import os; t=open('/proc/$SENDER_PID/stat').read().rsplit(')',1)[1].split(); print(round((int(t[11])+int(t[12]))/os.sysconf('SC_CLK_TCK'),3))")
kill "$SENDER_PID"; wait "$SENDER_PID" 2>/dev/null || true
failed=$(grep -c '"not delivered"' "$WORK/sender.log" || true)
say "sender: delivered=$delivered seconds=$(printf %.2f "$ours_seconds") cpu_seconds=$cpu not_delivered_logged=$failed"

# A message as the sender built it, for the same size on the other two paths.
SIZE=$(python3 - "$WORK" <<'PYEOF'
import sys
html = open(f"{sys.argv[1]}/body.html").read(); text = open(f"{sys.argv[1]}/body.txt").read()
# Rendered parts plus headers, DKIM signatures and MIME framing.
print(len(html) + len(text) + 1800)
PYEOF
)

say "phase 3: transport ceiling (smtp-source, $SIZE bytes, 32 reused connections)"
c_started=$(now)
/usr/sbin/smtp-source -d -s 32 -m "$N" -l "$SIZE" -f bench@bench.example -t sink@example.org "127.0.0.1:$SINK_PORT"
ceiling_seconds=$(python3 -c "print($(now) - $c_started)")

say "phase 4: Postfix relaying the same messages to the same sink"
"$ROOT/deploy/local/postfix-relay.sh" "$WORK/postfix" "$POSTFIX_PORT" "$SINK_PORT" none.invalid >&2
p_started=$(now)
/usr/sbin/smtp-source -d -s 32 -m "$N" -l "$SIZE" -f bench@bench.example -t sink@example.org "127.0.0.1:$POSTFIX_PORT"
for _ in $(seq 1 36000); do
  [ -z "$(find "$WORK/postfix/queue/incoming" "$WORK/postfix/queue/active" "$WORK/postfix/queue/deferred" "$WORK/postfix/queue/maildrop" -type f 2>/dev/null | head -1)" ] && break
  sleep 0.1
done
postfix_seconds=$(python3 -c "print($(now) - $p_started)")
relayed=$(grep -c "status=sent" "$WORK/postfix/maillog" 2>/dev/null || true)
say "postfix: relayed=$relayed seconds=$(printf %.2f "$postfix_seconds")"

[ "${delivered:-0}" -ge "$N" ] || { echo "the sender delivered ${delivered:-0} of $N (see $WORK/sender.log)" >&2; exit 1; }
python3 - "$N" "$delivered" "$ours_seconds" "$ceiling_seconds" "$postfix_seconds" "$rss_kb" "$cpu" <<'PYEOF'
import sys
n, delivered = int(sys.argv[1]), int(sys.argv[2])
ours, ceiling, postfix, rss_kb, cpu = (float(x) for x in sys.argv[3:8])
r, c, p = delivered / ours, n / ceiling, n / postfix
print(f"send: messages={delivered} msgs_per_s={r:.0f} ceiling_msgs_per_s={c:.0f} ratio={r / c:.2f} "
      f"postfix_msgs_per_s={p:.0f} vs_postfix={r / p:.2f} rss_mb={rss_kb / 1024:.0f} "
      f"cpu_ms_per_msg={cpu * 1000 / max(delivered, 1):.2f}")
PYEOF
