#!/usr/bin/env bash
# bench/segment.sh N — segment counts: Broadside's in-memory projection vs
# PostgreSQL 15 over a listmonk-like schema, side by side on the same data.
#
# Seeds N subscribers with 10 attributes, memberships in two lists, about
# one engagement event each (opens and clicks as feedback-events) and 10
# behavioral events each on average (purchases with amount and sku, logins,
# page views over a year, as behavior-events), starts
# `broadside serve --roles subscribers,segmentation`, and times 50
# PreviewSegment counts of a five-clause rule through gRPC on one
# connection. Then loads the same rows into PostgreSQL (JSONB attributes,
# subscriber_lists and campaign_views tables with listmonk's indexes, ANALYZEd)
# and times the equivalent SQL count (median of 5 warm runs). The same for a
# behavioral rule, against an events table (JSONB properties, indexed by
# name and time and by subscriber). Both counts must agree. Last line:
#   segment: subscribers=N count_p50_ms=X count_p99_ms=X postgres_ms=X ratio=R bytes_per_subscriber=B
#     events=E bytes_per_event=B behavior_count_p50_ms=X behavior_count_p99_ms=X behavior_postgres_ms=X behavior_ratio=R
set -euo pipefail

N="${1:-1000000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BROADSIDE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/broadside}"
WORK="$(mktemp -d /tmp/broadside-segment-bench.XXXXXX)"
chmod 755 "$WORK"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
GRPC=$((20000 + RANDOM % 10000)); ADMIN=$((GRPC + 1)); HTTP=$((GRPC + 2)); PGPORT=$((GRPC + 3)); INBOUND=$((GRPC + 4))
SERVE_PID=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  [ -n "$PGBIN" ] && [ -d "$WORK/pg" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "bench: $*" >&2; }

[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p broadside >&2)
[ -n "$PGBIN" ] || { echo "PostgreSQL binaries not found under /usr/lib/postgresql" >&2; exit 1; }
export BROADSIDE__DATA_DIR="$WORK/data"

RULE='attributes.country = "DE" and attributes.age >= 30 and in_list("weekly") and opened(within: 30d) and created_at > now() - 365d'
SQL_COUNT="SELECT count(*) FROM subscribers s
  WHERE s.attribs->>'country' = 'DE' AND (s.attribs->>'age')::numeric >= 30
    AND s.created_at > now() - interval '365 days'
    AND EXISTS (SELECT 1 FROM subscriber_lists sl WHERE sl.subscriber_id = s.id AND sl.list_id = 1 AND sl.status = 'confirmed')
    AND EXISTS (SELECT 1 FROM campaign_views v WHERE v.subscriber_id = s.id AND v.created_at > now() - interval '30 days');"

BRULE='did("purchase", within: 30d, count >= 2) and sum("purchase.amount", within: 90d) > 100 and not opened(within: 60d)'
SQL_BEHAVIOR="SELECT count(*) FROM subscribers s
  WHERE s.id IN (SELECT subscriber_id FROM behavior_events WHERE name = 'purchase' AND created_at > now() - interval '30 days'
                 GROUP BY subscriber_id HAVING count(*) >= 2)
    AND s.id IN (SELECT subscriber_id FROM behavior_events WHERE name = 'purchase' AND created_at > now() - interval '90 days'
                 GROUP BY subscriber_id HAVING sum((properties->>'amount')::numeric) > 100)
    AND NOT EXISTS (SELECT 1 FROM campaign_views v WHERE v.subscriber_id = s.id AND v.created_at > now() - interval '60 days');"

say "seeding $N subscribers"
POSITION=$("$BIN" bench seed-segments --subscribers "$N" --csv "$WORK/csv" | sed -n 's/^position=//p')

BROADSIDE__SERVER__GRPC_ADDR="127.0.0.1:$GRPC" BROADSIDE__SERVER__ADMIN_ADDR="127.0.0.1:$ADMIN" \
BROADSIDE__SERVER__HTTP_ADDR="127.0.0.1:$HTTP" BROADSIDE__FEEDBACK__INBOUND_ADDR="127.0.0.1:$INBOUND" \
  "$BIN" serve --roles subscribers,segmentation >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
started=$(date +%s.%N)
for _ in $(seq 1 1200); do
  out=$("$BIN" --server "http://127.0.0.1:$GRPC" segments preview --rule 'status = "active"' --sample 1 2>&1) && break
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
  sleep 0.5
done
loaded=$(python3 -c "print(round($(date +%s.%N) - $started, 1))")
say "projection snapshot loaded in ${loaded}s (${out%%$'\n'*})"
# Then wait until every seeded engagement and behavioral event is applied (read-your-writes by position).
"$BIN" --server "http://127.0.0.1:$GRPC" bench preview --rule 'status = "active"' --runs 1 --min-position "$POSITION" >/dev/null
say "events applied (position $POSITION) ${loaded}s + $(python3 -c "print(round($(date +%s.%N) - $started - $loaded, 1))")s later"

evaluated=$("$BIN" --server "http://127.0.0.1:$GRPC" segments preview --rule "$RULE" --sample 1)
say "server side: ${evaluated%%$'\n'*}"
result=$("$BIN" --server "http://127.0.0.1:$GRPC" bench preview --rule "$RULE" --runs 50)
say "broadside: $result"
ours_total=$(sed -n 's/.*total=\([0-9]*\).*/\1/p' <<<"$result")
p50=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$result")
p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$result")
bresult=$("$BIN" --server "http://127.0.0.1:$GRPC" bench preview --rule "$BRULE" --runs 50)
say "broadside behavioral: $bresult"
b_total=$(sed -n 's/.*total=\([0-9]*\).*/\1/p' <<<"$bresult")
b_p50=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$bresult")
b_p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$bresult")
metrics=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$ADMIN/metrics').read().decode())")
bytes=$(awk '/^broadside_segmentation_projection_bytes /{print $2}' <<<"$metrics")
members=$(awk '/^broadside_segmentation_subscribers /{print $2}' <<<"$metrics")
event_bytes=$(awk '/^broadside_segmentation_behavior_bytes /{print $2}' <<<"$metrics")
held_events=$(awk '/^broadside_segmentation_behavior_events /{print $2}' <<<"$metrics")
rss_kb=$(awk '/VmRSS/{print $2}' "/proc/$SERVE_PID/status")
say "projection: $members subscribers, $bytes bytes estimated, of which $event_bytes for $held_events behavioral events; serve RSS $((rss_kb / 1024)) MiB (whole process)"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""

say "postgres: loading the same data"
mkdir -p "$WORK/pg" && chown postgres "$WORK/pg" "$WORK" && chmod 700 "$WORK/pg"
chmod -R a+rX "$WORK/csv"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PGPORT -k $WORK -c listen_addresses='' -c shared_buffers=1GB -c work_mem=64MB" -l "$WORK/pg.log" -w start >/dev/null
PSQL=(runuser -u postgres -- psql -h "$WORK" -p "$PGPORT" -U postgres -q -v ON_ERROR_STOP=1)
"${PSQL[@]}" <<SQL
CREATE TYPE subscriber_status AS ENUM ('enabled', 'disabled', 'blocklisted');
CREATE TYPE subscription_status AS ENUM ('unconfirmed', 'confirmed', 'unsubscribed');
CREATE TABLE subscribers (
    id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, email TEXT NOT NULL, name TEXT NOT NULL,
    status subscriber_status NOT NULL, created_ms BIGINT NOT NULL, attribs JSONB NOT NULL,
    created_at TIMESTAMPTZ);
CREATE TABLE subscriber_lists (subscriber_id INTEGER NOT NULL, list_id INTEGER NOT NULL, status subscription_status NOT NULL,
    PRIMARY KEY (subscriber_id, list_id));
CREATE TABLE campaign_views (subscriber_id INTEGER NOT NULL, kind INTEGER NOT NULL, campaign TEXT NOT NULL, created_ms BIGINT NOT NULL,
    created_at TIMESTAMPTZ);
CREATE TABLE behavior_events (subscriber_id INTEGER NOT NULL, name TEXT NOT NULL, created_ms BIGINT NOT NULL,
    properties JSONB NOT NULL, created_at TIMESTAMPTZ);
\\copy subscribers (id, uuid, email, name, status, created_ms, attribs) FROM '$WORK/csv/subscribers.csv'
\\copy subscriber_lists FROM '$WORK/csv/memberships.csv'
\\copy campaign_views (subscriber_id, kind, campaign, created_ms) FROM '$WORK/csv/events.csv'
\\copy behavior_events (subscriber_id, name, created_ms, properties) FROM '$WORK/csv/behavior.csv'
UPDATE subscribers SET created_at = to_timestamp(created_ms / 1000.0);
UPDATE behavior_events SET created_at = to_timestamp(created_ms / 1000.0);
UPDATE campaign_views SET created_at = to_timestamp(created_ms / 1000.0);
DELETE FROM campaign_views WHERE kind <> 0; -- opens only (clicks are link_clicks in listmonk)
-- listmonk's indexes (schema.sql), plus one on the JSONB attributes.
CREATE UNIQUE INDEX idx_subs_email ON subscribers (LOWER(email));
CREATE INDEX idx_subs_status ON subscribers (status);
CREATE INDEX idx_subs_created_at ON subscribers (created_at);
CREATE INDEX idx_subs_attribs ON subscribers USING GIN (attribs);
CREATE INDEX idx_sub_lists_list_id ON subscriber_lists (list_id);
CREATE INDEX idx_sub_lists_status ON subscriber_lists (status);
CREATE INDEX idx_views_subscriber_id ON campaign_views (subscriber_id);
CREATE INDEX idx_views_date ON campaign_views (created_at);
-- An events table as a listmonk-style deployment would add it.
CREATE INDEX idx_behavior_name_time ON behavior_events (name, created_at);
CREATE INDEX idx_behavior_subscriber ON behavior_events (subscriber_id, name, created_at);
VACUUM ANALYZE;
SQL
# Runs $1 six times; sets PG_COUNT and PG_MS (the median of the 5 warm runs) and PG_RUNS.
pg_time() {
  local out times=()
  for _ in 1 2 3 4 5 6; do
    out=$("${PSQL[@]}" -tA -c '\timing on' -c "$1")
    PG_COUNT=$(head -1 <<<"$out")
    times+=("$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")")
  done
  PG_MS=$(printf '%s\n' "${times[@]:1}" | sort -n | sed -n 3p)
  PG_RUNS="${times[*]}"
}
pg_time "$SQL_COUNT"; pg_total=$PG_COUNT; pg_ms=$PG_MS
say "postgres: count=$pg_total in ${pg_ms} ms (runs: $PG_RUNS)"
say "broadside: count=$ours_total"
[ "$pg_total" = "$ours_total" ] || { echo "counts differ: broadside $ours_total, postgres $pg_total" >&2; exit 1; }
pg_time "$SQL_BEHAVIOR"; b_pg_total=$PG_COUNT; b_pg_ms=$PG_MS
events=$("${PSQL[@]}" -tA -c 'SELECT count(*) FROM behavior_events')
say "postgres behavioral: count=$b_pg_total in ${b_pg_ms} ms over $events events (runs: $PG_RUNS)"
say "broadside behavioral: count=$b_total"
[ "$b_pg_total" = "$b_total" ] || { echo "behavioral counts differ: broadside $b_total, postgres $b_pg_total" >&2; exit 1; }

python3 - "$N" "$p50" "$p99" "$pg_ms" "$bytes" "$members" "$events" "$b_p50" "$b_p99" "$b_pg_ms" "$event_bytes" <<'PYEOF'
import sys
n, p50, p99, pg, nbytes, members = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
events, b50, b99, bpg, ebytes = int(sys.argv[7]), float(sys.argv[8]), float(sys.argv[9]), float(sys.argv[10]), float(sys.argv[11])
# bytes_per_subscriber is the subscriber data (as before behavioral events); events are priced per event.
print(f"segment: subscribers={n} count_p50_ms={p50:.2f} count_p99_ms={p99:.2f} postgres_ms={pg:.1f} ratio={pg / p50:.0f} bytes_per_subscriber={(nbytes - ebytes) / max(members, 1):.0f}"
      f" events={events} bytes_per_event={ebytes / max(events, 1):.1f} behavior_count_p50_ms={b50:.2f} behavior_count_p99_ms={b99:.2f} behavior_postgres_ms={bpg:.1f} behavior_ratio={bpg / b50:.0f}")
PYEOF
