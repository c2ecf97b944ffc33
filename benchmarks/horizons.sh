#!/usr/bin/env bash
# Multi-horizon table of benchmarks/RESULTS.md ("Multi-horizon forecasts, without look-ahead"): ETTh1 in the
# FSNet/OneNet protocol (variables, z-scale rows, scored rows, lags), horizons 1, 24 and 48, every learner
# with the defaults, persistence, seasonal naive (period 24 h), the running mean and linear. Each forecast
# is scored when its target arrives and learned from only then. Writes JSON and PNGs under benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=benchmarks/out
streamer bench $DATA/ett/ETTh1.csv --series HUFL,HULL,MUFL,MULL,LUFL,LULL,OT --warmup 2880 --start 3600 \
  --end 14400 --lags 3 --horizons 1,24,48 --period 24 --seeds ${ETT_SEEDS:-1} \
  --json $OUT/etth1-horizons.json --plot $OUT/etth1-horizons.png
