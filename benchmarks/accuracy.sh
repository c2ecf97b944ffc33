#!/usr/bin/env bash
# Accuracy table of benchmarks/RESULTS.md: prequential NMSE, 5 seeds, on the three regression
# streams, and the ETTh1 online protocol. Writes JSON and PNG under benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=benchmarks/out
SEEDS=${SEEDS:-5}
streamer bench $DATA/regression/kin8nm.csv --target target --hidden 16 --head plain --seeds $SEEDS --set sgd.lr=0.2 \
  --json $OUT/kin8nm.json --plot $OUT/kin8nm.png
streamer bench $DATA/regression/elevators.csv --target target --hidden 12 --head plain --seeds $SEEDS --set sgd.lr=0.3 \
  --json $OUT/elevators.json --plot $OUT/elevators.png
streamer bench $DATA/regression/puma8nh.csv --target target --hidden 16 --head skip --seeds $SEEDS \
  --set ekf.p0=25 --set dekf.p0=25 --json $OUT/puma8nh.json --plot $OUT/puma8nh.png
streamer bench $DATA/ett/ETTh1.csv --series HUFL,HULL,MUFL,MULL,LUFL,LULL,OT --warmup 2880 --start 3600 \
  --end 14400 --lags 3 --hidden 8 --seeds ${ETT_SEEDS:-1} --json $OUT/etth1.json --plot $OUT/etth1.png
