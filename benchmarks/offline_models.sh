#!/usr/bin/env bash
# Offline section of benchmarks/RESULTS.md, second part: anomaly detection with the sequence
# autoencoders on ETTh1 (faults planted in the test rows), the Fashion-MNIST image autoencoders,
# and the text classifiers. Writes JSON, PNG and model files under benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=benchmarks/out
mkdir -p $OUT
offline train autoencoder $DATA/ett/ETTh1.csv --columns HUFL,HULL,MUFL,MULL,LUFL,LULL,OT \
  --splits 8640,11520,14400 --lookback 48 --epochs 15 --seeds 5 --out $OUT/ae
offline train image-autoencoder --epochs 10 --out $OUT/images
offline train text --epochs 8 --out $OUT/text
