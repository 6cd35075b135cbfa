#!/bin/sh
# Issue 27's experiment: the headline (five samples of the embedded 1.5B voting beat the model
# alone on GSM8K) measured again with independent draws per item. The 200 reported items of
# run_samples.sh (the first 200 of the seed-0 draw: --draw-seed 0), answered under two base
# seeds (1 and 2) with per-item seeds: each item's calls draw with a seed derived from the base
# seed and the item's id, so no two items share their draws and a rerun repeats every call.
# Systems: the 1.5B sampled (temperature 0.7), the 1.5B greedy, the vote over 5 samples and the
# confidence-weighted vote over the same 5 (one n=5 request with log-probabilities, which the
# call cache serves to the second vote). GSM8K first (the claim), then ARC-Challenge.
# Stages of 50 items, both seeds in turn, so an interrupted run leaves complete, reportable
# subsets of both; rerunning resumes from the caches (answers in cache.jsonl, model calls in
# calls.sqlite) and, once everything is answered, rebuilds every report with no model call.
# Reports: experiments/DATASET-per-item/seedS (per seed, as moa-graph eval writes them); the
# tables of docs/experiments.md, each seed and both pooled, from the committed caches with no
# model call: python experiments/pooled_seeds.py experiments/DATASET-per-item --dataset DATASET \
#   --limit 200 --draw-seed 0 --seeds 1 2 --systems <the SYSTEMS below>
# Usage: sh experiments/run_seeds.sh [moa-graph command] [data sets]
set -e
MOA=${1:-moa-graph}
DATASETS=${2:-gsm8k arc}
M=local:qwen2.5-coder-1.5b
# timeout=none: on a machine shared with other work, a five-sample request can take longer than
# the default 120 s a call may take
SYSTEMS="$M,temperature=0,name=qwen2.5-coder-1.5b-greedy $M \
  self-moa:$M,n=5,aggregation=vote,timeout=none,name=self-moa-vote-5 \
  self-moa:$M,n=5,aggregation=weighted_vote,timeout=none,name=self-moa-weighted-vote-5"
for dataset in $DATASETS; do
  for limit in 50 100 150 200; do
    for seed in 1 2; do
      $MOA eval --dataset "$dataset" --limit "$limit" --draw-seed 0 --seed "$seed" \
        --max-tokens 320 --quiet --out "experiments/$dataset-per-item" \
        --report-dir "experiments/$dataset-per-item/seed$seed" \
        --pair self-moa-weighted-vote-5=self-moa-vote-5 --systems $SYSTEMS > /dev/null
    done
  done
done
