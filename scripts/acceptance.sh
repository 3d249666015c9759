#!/usr/bin/env bash
# The acceptance scenario, end to end on the local services (after ./dev.sh demo or `k2 services up`):
# 4 M seeded rows per exchange -> all nine tables, verified; the same partition run three times with the
# content of every table unchanged; a late-data seed; a minute of live feed with runs in between.
# `k2 verify` must report 0 mismatches on every layer each time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
k2 services up >/dev/null
eval "$(k2 services env)"
day="${1:-2026-11-20}"
rows="${2:-4000000}"

step() { printf '\n== %s\n' "$*"; }
step "seed $rows rows per exchange for $day";  k2 feed seed --date "$day" --rows "$rows" --seed 11 --quiet
for i in 1 2 3; do
  step "run partition $day (#$i)";  /usr/bin/time -f "   %e s, peak RSS %M KiB" k2 run --partition "$day"
  python scripts/fingerprint.py "$day" > "/tmp/k2-fingerprint-$i.txt"
done
step "content after runs 1, 2 and 3 (must be identical)";  cat /tmp/k2-fingerprint-1.txt
diff /tmp/k2-fingerprint-1.txt /tmp/k2-fingerprint-2.txt && diff /tmp/k2-fingerprint-2.txt /tmp/k2-fingerprint-3.txt && echo "   identical"
step "verify";  k2 verify --date "$day"
step "late data: 200,000 more rows per exchange for $day";  k2 feed seed --date "$day" --rows 200000 --seed 12 --quiet
k2 run --partition "$day";  k2 verify --date "$day"
step "live feed for 60 s at 2,000 trades/s per exchange, with runs in between"
k2 feed live --rate 2000 --duration 60 --seed 13 --quiet &
feed=$!
for i in 1 2 3 4; do sleep 12; k2 run | tail -n +3 | cut -c1-90; done
wait "$feed"
k2 run | tail -n +3 | cut -c1-90
step "final verify (every table and day)";  k2 verify
