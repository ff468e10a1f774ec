#!/usr/bin/env bash
# Bounce classification speed and yield, side by side with Mailman's
# flufl.bounce on the same messages.
#
#   bench/classify.sh DIR
#
# Classifies every .eml under DIR (recursively) with `broadside feedback
# classify --summary` and with flufl.bounce (pip, cached in
# ~/.cache/broadside/venv-flufl), each timing classification only (the files
# are read first), on one core. Prints:
#
#   classify: files=N parsed=N with_recipient=N with_status=N msgs_per_s=R
#   reason: <reason>=N ...
#   peer: flufl.bounce files=N with_recipient=N msgs_per_s=R
#   ratio: speed=X with_recipient=Y      (broadside / flufl.bounce)
#
# BROADSIDE_BIN picks the binary (default: target/release/broadside, brought up to date first).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:?usage: bench/classify.sh DIR}"
[ -d "$DIR" ] || { echo "bench/classify.sh: $DIR is not a directory" >&2; exit 2; }
BIN="${BROADSIDE_BIN:-}"
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build --release -p broadside >&2)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/broadside"
fi
VENV="$HOME/.cache/broadside/venv-flufl"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import flufl.bounce' 2>/dev/null; then
  python3 -m venv "$VENV" >&2 && "$VENV/bin/pip" install -q 'flufl.bounce==6.0.0' >&2
fi

OURS="$(taskset -c 0 "$BIN" feedback classify --summary "$DIR" 2>/dev/null || "$BIN" feedback classify --summary "$DIR")"
echo "$OURS"
PEER="$("$VENV/bin/python" - "$DIR" <<'PY'
import email, os, sys, time
from email import policy
from flufl.bounce import all_failures

raw = []
for root, _, files in os.walk(sys.argv[1]):
    for name in sorted(files):
        if name.lower().endswith(".eml"):
            with open(os.path.join(root, name), "rb") as f:
                raw.append(f.read())
def scan(data):
    message = email.message_from_bytes(data, policy=policy.compat32)
    try:
        temporary, permanent = all_failures(message)
    except Exception:
        temporary, permanent = set(), set()
    return bool(temporary or permanent)

started = time.perf_counter()
found = sum(scan(data) for data in raw)
scanned = len(raw)
while raw and time.perf_counter() - started < 0.5:  # as broadside does: half a second at least
    scanned += sum(1 for data in raw if scan(data) or True)
seconds = max(time.perf_counter() - started, 1e-9)
print(f"peer: flufl.bounce files={len(raw)} with_recipient={found} msgs_per_s={scanned / seconds:.0f}")
PY
)"
echo "$PEER"
python3 - "$OURS" "$PEER" <<'PY'
import sys
def fields(line):
    return {k: float(v) for k, v in (w.split("=") for w in line.split() if "=" in w)}
ours, peer = fields(sys.argv[1].splitlines()[0]), fields(sys.argv[2])
speed = ours["msgs_per_s"] / max(peer["msgs_per_s"], 1e-9)
found = ours["with_recipient"] / max(peer["with_recipient"], 1)
print(f"ratio: speed={speed:.1f} with_recipient={found:.2f}")
PY
