#!/bin/sh
# Issue 16's experiment: does a vote over samples of the best embedded model beat the model
# alone, with enough items to tell? GSM8K then ARC-Challenge, seed 0, 250 items: the first 200
# drawn are reported, the other 50 are held out to choose confidence_temperature
# (experiments/calibrate_confidence.py). Shares the folders of run_local.sh: the model alone and
# the 5-sample vote keep their names and settings there, so their first 60 answers are reused;
# the vote and the weighted vote ask for the same requests (the embedded models give
# log-probabilities at no cost), which the call cache serves once. A weighted vote over 3
# samples would be a request of its own (n=3): about 2.5 hours more on this machine, left out.
# Then the 1.5B answering greedily (temperature 0), on the 200 reported items: the sampled
# model alone draws with one seed on every item, which on ARC's few-token answers is one
# fixed draw for the letter (README, "Five samples at 200 items"); greedy is its best answer.
# Usage: sh experiments/run_samples.sh [moa-graph command]
set -e
MOA=${1:-moa-graph}
M=local:qwen2.5-coder-1.5b
SYSTEMS="$M self-moa:$M,n=5,aggregation=vote,name=self-moa-vote-5 \
  self-moa:$M,n=5,aggregation=weighted_vote,name=self-moa-weighted-vote-5"
GREEDY="$M,temperature=0,name=qwen2.5-coder-1.5b-greedy"
run() {  # run DATASET LIMIT REPORT SYSTEMS [more options]: one stage, its report in REPORT
  dataset=$1 limit=$2 report=$3 systems=$4
  shift 4
  $MOA eval --dataset "$dataset" --limit "$limit" --seed 0 --seed-mode fixed --max-tokens 320 --quiet \
    --out "experiments/$dataset-local" --report-dir "experiments/$dataset-local/$report" \
    --systems $systems "$@" > /dev/null
}
for dataset in gsm8k arc; do  # GSM8K first: the data set the target is about
  for limit in 100 150 200 250; do
    run $dataset $limit samples "$SYSTEMS"
  done
done
for dataset in gsm8k arc; do
  run $dataset 200 samples-greedy "$GREEDY"
done
# ARC again with another seed (other items, samples seeded 7 to 11): how much of ARC's result
# rests on seed 0's draws (README)
$MOA eval --dataset arc --limit 200 --seed 7 --seed-mode fixed --max-tokens 320 --quiet \
  --out experiments/arc-local-seed7 --pair self-moa-weighted-vote-5=self-moa-vote-5 \
  --systems $GREEDY $SYSTEMS > /dev/null
for dataset in gsm8k arc; do  # the reports, of the 200 test items (not the held-out ones):
  # against the sampled model alone, with the weighted vote against the plain one (CISC's own
  # comparison); then against the best single model, greedy or sampled
  run $dataset 200 samples "$SYSTEMS" --report-only --pair self-moa-weighted-vote-5=self-moa-vote-5
  run $dataset 200 samples-greedy "$GREEDY $SYSTEMS" --report-only \
    --pair self-moa-weighted-vote-5=self-moa-vote-5
done
