#!/usr/bin/env bash
# bench/import.sh ROWS — durable CSV import: Broadside vs PostgreSQL COPY.
#
# Generates ROWS subscribers with 10 attributes, imports them into the
# embedded store through the real path (the `broadside subscribers import`
# CLI streaming to `broadside serve` over gRPC), then loads the same rows
# into PostgreSQL 15 with COPY into a listmonk-like table (JSONB attributes,
# unique email index): the physical-limit peer on this machine. Both sides
# commit durably: Broadside runs SQLite in WAL mode with synchronous=NORMAL
# and fsyncs the WAL before the import reports success (so a power cut after
# the answer loses nothing); PostgreSQL runs its defaults (fsync on,
# synchronous_commit on).
#
# Last line:
#   import: rows=N seconds=S rows_per_s=R postgres_copy_rows_per_s=P ratio=R/P bytes_per_row=B peak_mib=M durability=D
# (bytes_per_row: the store's directory on disk over the rows; peak_mib: the
# server's peak resident memory)
set -euo pipefail

ROWS="${1:-1000000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BROADSIDE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/broadside}"
WORK="$(mktemp -d /tmp/broadside-import-bench.XXXXXX)"
chmod 755 "$WORK"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
GRPC=$((30000 + RANDOM % 10000)); ADMIN=$((GRPC + 1)); HTTP=$((GRPC + 2)); PGPORT=$((GRPC + 3))
SERVE_PID=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  [ -n "$PGBIN" ] && [ -d "$WORK/pg" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "bench: $*" >&2; }
now() { date +%s.%N; }

[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p broadside >&2)
[ -n "$PGBIN" ] || { echo "PostgreSQL binaries not found under /usr/lib/postgresql" >&2; exit 1; }

say "generating $ROWS rows"
python3 - "$ROWS" "$WORK/subscribers.csv" "$WORK/postgres.tsv" <<'PYEOF'
import json, random, sys
rows, csv_path, pg_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = random.Random(7)
cities = ["Paris", "Berlin", "Lisbon", "Oslo", "Rome", "Madrid", "Vienna", "Prague"]
plans = ["free", "pro", "team", "enterprise"]
firsts = ["ada", "alan", "grace", "edsger", "barbara", "donald", "margaret", "ken", "dennis", "frances", "john",
          "radia", "tim", "linus", "guido", "bjarne", "niklaus", "leslie", "shafi", "silvio"]
lasts = ["lovelace", "turing", "hopper", "dijkstra", "liskov", "knuth", "hamilton", "thompson", "ritchie", "allen",
         "backus", "perlman", "berners", "torvalds", "rossum", "stroustrup", "wirth", "lamport", "goldwasser", "micali"]
domains = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me", "gmx.de", "web.de",
           "orange.fr", "free.fr", "example.org", "example.net"]
with open(csv_path, "w") as csv, open(pg_path, "w") as pg:
    csv.write("email,name,city,plan,age:number,score:number,vip:bool,signup:timestamp,tags:list,country,lang,source\n")
    for i in range(rows):
        # Realistic addresses: random order, so both sides' unique indexes take random inserts.
        first, last = rng.choice(firsts), rng.choice(lasts)
        email = f"{first}.{last}.{i:x}@{rng.choice(domains)}"
        name = f"{first.title()} {last.title()}"
        city, plan = rng.choice(cities), rng.choice(plans)
        age, score, vip = 18 + i % 60, round(rng.random() * 100, 2), "true" if i % 7 == 0 else "false"
        signup = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z"
        tags = "news|offers" if i % 3 == 0 else "news"
        country, lang, source = rng.choice(["FR", "DE", "PT", "NO"]), rng.choice(["fr", "de", "en"]), "signup-form"
        csv.write(f"{email},{name},{city},{plan},{age},{score},{vip},{signup},{tags},{country},{lang},{source}\n")
        attributes = {"city": city, "plan": plan, "age": age, "score": score, "vip": vip == "true", "signup": signup,
                      "tags": tags.split("|"), "country": country, "lang": lang, "source": source}
        pg.write(f"{email}\t{name}\t{json.dumps(attributes)}\n")
PYEOF
say "csv is $(du -h "$WORK/subscribers.csv" | cut -f1)"

# --- Broadside: serve (subscribers role, embedded store), then the CLI import.
BROADSIDE__DATA_DIR="$WORK/data" BROADSIDE__SERVER__GRPC_ADDR="127.0.0.1:$GRPC" \
BROADSIDE__SERVER__ADMIN_ADDR="127.0.0.1:$ADMIN" BROADSIDE__SERVER__HTTP_ADDR="127.0.0.1:$HTTP" \
  ${BROADSIDE_BENCH_WRAP:-} "$BIN" serve --roles subscribers >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 300); do [ -f "$WORK/data/admin.key" ] && (echo >/dev/tcp/127.0.0.1/$GRPC) 2>/dev/null && break; sleep 0.1; done
export BROADSIDE__DATA_DIR="$WORK/data"
CLI=("$BIN" --server "http://127.0.0.1:$GRPC")
LIST=$("${CLI[@]}" lists create "import bench" | cut -f1)
started=$(now)
"${CLI[@]}" subscribers import "$WORK/subscribers.csv" --list "$LIST" | tee "$WORK/import.out" >&2
ours_seconds=$(python3 -c "print(round($(now) - $started, 3))")
imported=$(sed -n 's/^imported \([0-9]*\),.*/\1/p' "$WORK/import.out")
[ "$imported" = "$ROWS" ] || { echo "expected $ROWS imported, got '$imported' (see $WORK/serve.log)" >&2; exit 1; }
serve_cpu=$(python3 -c "import os; t=open('/proc/$SERVE_PID/stat').read().rsplit(')',1)[1].split(); print(round((int(t[11])+int(t[12]))/os.sysconf('SC_CLK_TCK'),2))")
serve_peak=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$SERVE_PID/status")
say "serve used ${serve_cpu}s of CPU (${ours_seconds}s wall, 2 cores), peak memory $((serve_peak / 1024)) MiB"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""
# The whole store on disk, after the server stopped, with its WAL folded in
# (a stop normally does that; a fold here keeps one late frame from counting twice).
python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)')" "$WORK/data/broadside.db"
db_bytes=$(du -sb "$WORK/data" --exclude='*.key' | cut -f1)
say "broadside: $ROWS rows in ${ours_seconds}s; store on disk $(du -sh "$WORK/data" | cut -f1)"

# --- PostgreSQL: COPY into a listmonk-like subscribers table.
mkdir -p "$WORK/pg" && chown postgres "$WORK/pg" "$WORK" && chmod 700 "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PGPORT -k $WORK -c listen_addresses=''" -l "$WORK/pg.log" -w start >/dev/null
PSQL=(runuser -u postgres -- psql -h "$WORK" -p "$PGPORT" -U postgres -q -v ON_ERROR_STOP=1)
"${PSQL[@]}" <<'SQL'
CREATE TYPE subscriber_status AS ENUM ('enabled', 'disabled', 'blocklisted');
CREATE TABLE subscribers (
    id SERIAL PRIMARY KEY, uuid UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    email TEXT NOT NULL, name TEXT NOT NULL, attribs JSONB NOT NULL DEFAULT '{}',
    status subscriber_status NOT NULL DEFAULT 'enabled',
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
CREATE UNIQUE INDEX idx_subs_email ON subscribers (LOWER(email));
SQL
chmod 644 "$WORK/postgres.tsv"
started=$(now)
"${PSQL[@]}" -c "\\copy subscribers (email, name, attribs) FROM '$WORK/postgres.tsv'"
pg_seconds=$(python3 -c "print(round($(now) - $started, 3))")
pg_rows=$("${PSQL[@]}" -tA -c "SELECT count(*) FROM subscribers")
[ "$pg_rows" = "$ROWS" ] || { echo "postgres loaded $pg_rows rows, expected $ROWS" >&2; exit 1; }
say "postgres COPY: $ROWS rows in ${pg_seconds}s"

python3 - "$ROWS" "$ours_seconds" "$pg_seconds" "$db_bytes" "$serve_peak" <<'PYEOF'
import sys
rows, ours, pg, db_bytes, peak_kb = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r, p = rows / ours, rows / pg
print(f"import: rows={rows} seconds={ours:.2f} rows_per_s={r:.0f} postgres_copy_rows_per_s={p:.0f} ratio={r / p:.2f} "
      f"bytes_per_row={db_bytes / rows:.0f} peak_mib={peak_kb / 1024:.0f} durability=wal-normal+fsync-at-end")
PYEOF
