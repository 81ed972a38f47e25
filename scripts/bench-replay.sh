#!/usr/bin/env bash
# Replay as a whole process on a large file (BENCHMARKS.md, "Replay"):
# generates a seeded NDJSON workload (once), then times, on one core and
# with the file in the page cache, the ceiling (bench_ceiling: stream the
# file, serde_json typed parse) and `firstseen replay` on the same bytes,
# with peak memory from /usr/bin/time. Prints one line per run.
#
# Usage:   scripts/bench-replay.sh [RECORDS] [CPU] [EXTRA_BINARY...]
#          RECORDS defaults to 1000000 (about 2.2 GB), CPU to 1. Extra
#          binaries (e.g. an older build of firstseen) are timed the same way.
# Needs:   data/asn (scripts/fetch-asn-db.sh), /usr/bin/time, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
cpu="${2:-1}"
shift $(( $# > 2 ? 2 : $# )) || true
target="${CARGO_TARGET_DIR:-target}"
# v2: body sizes drawn once per body (uniform 1–50 records); a file of the
# earlier generator (replay-N.ndjson, ~4 records per body) is not reused.
file="data/bench/replay-${records}.v2.ndjson"

cargo build --release --locked --bin firstseen --example bench_generate --example bench_ceiling >&2
if [ ! -s "$file" ]; then
  "$target/release/examples/bench_generate" --out "$file" --records "$records" >&2
fi
cat "$file" > /dev/null   # warm the page cache: every run reads from memory

run() {
  local name="$1"; shift
  local out
  out="$( { /usr/bin/time -f 'TIME %e s, max RSS %M KB' taskset -c "$cpu" "$@" > /dev/null; } 2>&1 | grep -E '^TIME|replay:|ceiling:' | tr '\n' ' ')"
  echo "$name: $out"
}

for round in 1 2 3; do
  echo "round $round"
  run ceiling "$target/release/examples/bench_ceiling" "$file"
  run "firstseen replay" "$target/release/firstseen" replay --asn-db data/asn "$file"
  for extra in "$@"; do
    run "$extra replay" "$extra" replay --asn-db data/asn "$file"
  done
done
