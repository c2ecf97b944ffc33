#!/usr/bin/env bash
# Offline section of benchmarks/RESULTS.md: forecasting baselines against persistence (ETTh1 and a
# packaged multi-series set, horizons 1 and 24) and the warm start on the ETTh1 online protocol.
# Writes JSON and PNG under benchmarks/out/ (copy them to benchmarks/data and benchmarks/plots).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=benchmarks/out
EPOCHS=${EPOCHS:-30}
mkdir -p $OUT

# Forecasting. ETTh1 OT alone (the literature's univariate "S" setting: the six loads only add
# overfitting here), the 12/4/4-month split, a 96-hour window read every 2nd hour.
for H in 1 24; do
  offline train forecast $DATA/ett/ETTh1.csv --target OT --columns OT --splits 8640,11520,14400 --lookback 96 \
    --step 2 --horizon $H --epochs $EPOCHS --patience 6 --out $OUT/forecast
done
# vic_elec (tsdata, the fpp3 data): half-hourly electricity demand of Victoria with temperature and the
# holiday flag; one year to train, a quarter each to validate and test; horizon 24 = 12 hours ahead.
for H in 1 24; do
  offline train forecast pkg:tsdata/fpp3/vic_elec.csv --target Demand --columns Demand,Temperature,Holiday \
    --splits 17520,21888,26256 --lookback 96 --step 2 --horizon $H --epochs $EPOCHS --patience 6 --max-batches 100 \
    --out $OUT/forecast
done

# Warm start: train the online regressor on ETTh1 rows 0-2,880 (stop early on 2,880-3,600), then
# stream rows 3,600-14,400 to learners that have seen nothing else, cold and warm.
SERIES=HUFL,HULL,MUFL,MULL,LUFL,LULL,OT
offline train warm-start $DATA/ett/ETTh1.csv --series $SERIES --train-rows 2880 --val-rows 3600 --lags 24 \
  --hidden 8 --out $OUT/warm/etth1-warm.tsmf
COMMON="$DATA/ett/ETTh1.csv --series $SERIES --warmup 2880 --feed-from 3600 --start 3600 --end 14400 --lags 24 \
  --hidden 8 --learners sgd,ekf,pf --head-steps 500"
streamer bench $COMMON --json $OUT/warm/cold.json --plot $OUT/warm/cold.png
streamer bench $COMMON --warm-start $OUT/warm/etth1-warm.tsmf --json $OUT/warm/warm.json --plot $OUT/warm/warm.png
