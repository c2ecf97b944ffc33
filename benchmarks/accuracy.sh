#!/usr/bin/env bash
# Accuracy table of benchmarks/RESULTS.md: prequential NMSE, 5 seeds, on the three regression
# streams, and the ETTh1 online protocol. Every learner runs with the defaults a user gets (the
# daemon's: models/defaults.py), no per-stream settings; the ETTh1 flags are the published
# protocol (variables, z-scale rows, scored rows, lags), not tuning. Writes JSON and PNG under
# benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=benchmarks/out
SEEDS=${SEEDS:-5}
for name in kin8nm elevators puma8nh; do
  streamer bench $DATA/regression/$name.csv --target target --seeds $SEEDS --json $OUT/$name.json --plot $OUT/$name.png
done
streamer bench $DATA/ett/ETTh1.csv --series HUFL,HULL,MUFL,MULL,LUFL,LULL,OT --warmup 2880 --start 3600 \
  --end 14400 --lags 3 --seeds ${ETT_SEEDS:-1} --json $OUT/etth1.json --plot $OUT/etth1.png
