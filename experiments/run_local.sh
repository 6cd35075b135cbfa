#!/bin/sh
# The experiment on the embedded local models: GSM8K then ARC-Challenge, 60 items each,
# standard synthesis against a staircase (8-token first chunk, growing twofold) among them,
# seed 0 (the `local` recipe's own staircase grows eightfold: the system names its twofold growth);
# each staircase system is also paired against its standard synthesis. Runs in stages
# (20, 40, 60 items, alternating data sets; a stage's items include the previous stage's),
# so an interrupted run leaves complete, reportable subsets of both data sets;
# rerunning resumes from the caches (answers in cache.jsonl, model calls in calls.sqlite).
# Usage: sh experiments/run_local.sh [moa-graph command]
set -e
MOA=${1:-moa-graph}
M=local:qwen2.5-coder-1.5b
SELF="self-moa:$M,n=3"
SYSTEMS="$M local:qwen2.5-coder-0.5b local:smollm2-135m local,staircase=none,name=moa-local \
  $SELF,name=self-moa-synthesize $SELF,aggregation=vote,name=self-moa-vote \
  $SELF,aggregation=rank,name=self-moa-rank \
  $SELF,aggregation=synthesize_with_votes,name=self-moa-synthesize-votes \
  $SELF,early_exit=true,name=self-moa-early-exit \
  self-moa:$M,n=5,aggregation=vote,name=self-moa-vote-5 \
  local,staircase=8,staircase_growth=2,name=moa-local-staircase $SELF,staircase=8,name=self-moa-staircase"
for limit in 20 40 60; do
  for dataset in gsm8k arc; do
    $MOA eval --dataset $dataset --limit $limit --seed 0 --seed-mode fixed --max-tokens 320 --quiet \
      --out experiments/$dataset-local --systems $SYSTEMS \
      --pair moa-local-staircase=moa-local self-moa-staircase=self-moa-synthesize > /dev/null
  done
done
