#!/bin/sh
# Accuracy of staircase streaming by chunk size: the `local` mixture on the first 20 GSM8K
# items of the main experiment (seed 0), standard synthesis against first chunks of 8, 16, 32
# and 64 tokens growing twofold, and of 8 tokens growing eightfold (the `local` recipe's own
# schedule), each paired against standard synthesis. The twofold systems name their growth:
# the recipe's own is eightfold. Answers and model
# calls live in experiments/gsm8k-local (shared with run_local.sh: standard synthesis and the
# 8-token staircase are answered there already); the report goes to its staircase-sweep folder.
# Usage: sh experiments/run_staircase_sweep.sh [moa-graph command]
set -e
MOA=${1:-moa-graph}
SYSTEMS="local,staircase=none,name=moa-local local,staircase=8,staircase_growth=2,name=moa-local-staircase"
PAIRS="moa-local-staircase=moa-local"
for chunk in 16 32 64; do
  SYSTEMS="$SYSTEMS local,staircase=$chunk,staircase_growth=2,name=moa-local-staircase-$chunk"
  PAIRS="$PAIRS moa-local-staircase-$chunk=moa-local"
done
SYSTEMS="$SYSTEMS local,staircase=8,name=moa-local-staircase-g8"
PAIRS="$PAIRS moa-local-staircase-g8=moa-local"
$MOA eval --dataset gsm8k --limit 20 --seed 0 --seed-mode fixed --max-tokens 320 --quiet \
  --out experiments/gsm8k-local --report-dir experiments/gsm8k-local/staircase-sweep \
  --systems $SYSTEMS --pair $PAIRS > /dev/null
