#!/usr/bin/env bash
# Throughput of the distributed pipeline at 1, 2 and 4 sender replicas, side
# by side with the transport ceiling of this machine (smtp-source pushing the
# same number of same-size messages into the same smtp-sink over reused
# connections), in one run. Prints each result and the ratios.
#
#   bench/distributed-scaling.sh [RECIPIENTS]     (default 50000)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N="${1:-50000}"
declare -A RATE
CEILING=""
for senders in 1 2 4; do
  extra=()
  [ "$senders" = 1 ] && extra=(--ceiling)
  out="$("$ROOT/bench/distributed.sh" --recipients "$N" --senders "$senders" "${extra[@]}")"
  echo "$out" | sed "s/^/senders=$senders  /"
  RATE[$senders]="$(echo "$out" | sed -n 's/^distributed: .* msgs_per_s=\([0-9.]*\).*/\1/p')"
  [ "$senders" = 1 ] && CEILING="$(echo "$out" | sed -n 's/^ceiling: .* msgs_per_s=\([0-9.]*\).*/\1/p')"
done
python3 - "$CEILING" "${RATE[1]}" "${RATE[2]}" "${RATE[4]}" <<'PY'
import sys
ceiling, *rates = map(float, sys.argv[1:])
for senders, rate in zip((1, 2, 4), rates):
    print(f"scaling: senders={senders} msgs_per_s={rate:.0f} vs_ceiling={rate / ceiling:.3f} vs_one_sender={rate / rates[0]:.2f}")
print(f"scaling: ceiling_msgs_per_s={ceiling:.0f}")
PY
