#!/usr/bin/env bash
# Issue 2's real-data check: RWS (K = 5, q by wake + sleep) against classical wake-sleep on the
# fixed binarisation of MNIST, same model (one-layer SBN-200), same budget (epochs, batch, learning
# rates, seed), both evaluated with K = 5000 on the full 10,000-image test set.
# Usage: WAKESLEEP_DATA_DIR=../shared/data bash experiments/binarized_mnist_rws_vs_ws.sh [EPOCHS]
set -euo pipefail
EPOCHS=${1:-20}
OUT=${OUT:-runs/bmnist}
COMMON="--dataset binarized-mnist --model sbn --layers 200 --epochs $EPOCHS --batch-size 100 --lr-p 1e-3 --lr-q 1e-3 --seed 0 --patience 100 --valid-k 100 --test-k 5000 --no-progress"
wakesleep train --algorithm rws --k 5 --q-update both $COMMON --run-dir "$OUT/rws-k5"
wakesleep train --algorithm ws $COMMON --run-dir "$OUT/ws"
for r in rws-k5 ws; do echo "$r: $(cat "$OUT/$r/summary.json" | tr -d '\n ')"; done
