#!/usr/bin/env bash
# Efficacy of every defence on real weights, FigStep pairs 0-49 to calibrate and 50-99 to evaluate.
# Needs the testbeds (pip install -e ./testbeds; python -m guardrail_testbeds.build build NAME) and
# ../shared/data/figstep.
# Each run writes report.json, report.md and tradeoff.png under benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/figstep
PAIRS=(--harmful $DATA/harmful_train_100.json --safe $DATA/safe_train_100.json --calib 0:50 --eval 50:100)

# The pilot's setting (40 new tokens), every method, alpha 0.05..0.3.
guardrail eval --testbed qwen2.5-coder-0.5b-instruct "${PAIRS[@]}" --alphas 0.05 0.1 0.15 0.2 0.3 \
    --out benchmarks/results/efficacy_qwen05b
# The product as users deploy it: SARSteer behind the probe gate (probe trained on the calibration pairs).
guardrail eval --testbed qwen2.5-coder-0.5b-instruct "${PAIRS[@]}" --methods none,sarsteer --gates probe probe_exact \
    --alphas 0.1 0.2 0.3 0.5 --max-new-tokens 20 --out benchmarks/results/gated_qwen05b
# What moves the always-on frontier (layer bands, rank, refusal text, more calibration pairs).
python benchmarks/frontier.py --testbed qwen2.5-coder-0.5b-instruct --alphas 0.1 0.2 0.3 --out benchmarks/results/frontier_qwen05b
# The judge reads the first 60 characters; greedy answers share their first 20 tokens whatever the
# budget, so the other runs generate 20 tokens (same verdicts, half the time).
guardrail eval --testbed smollm2-135m-instruct "${PAIRS[@]}" --alphas 0.05 0.1 0.2 0.3 0.5 \
    --max-new-tokens 20 --out benchmarks/results/efficacy_smollm2
guardrail eval --testbed qwen2.5-coder-1.5b-instruct "${PAIRS[@]}" --methods none,refusal_steer,sarsteer --alphas 0.05 0.1 0.2 \
    --max-new-tokens 20 --batch-size 10 --out benchmarks/results/efficacy_qwen15b
# The probe threshold: lower thresholds flag more requests (curve over thresholds and strengths).
guardrail eval --testbed qwen2.5-coder-0.5b-instruct "${PAIRS[@]}" --methods none,sarsteer --gates probe \
    --alphas 0.3 0.5 --thresholds 0.3 0.5 --max-new-tokens 20 --out benchmarks/results/gated_thresholds_qwen05b
# The 1.5B run above covers none, refusal_steer and sarsteer; the other defences, then one merged report.
guardrail eval --testbed qwen2.5-coder-1.5b-instruct "${PAIRS[@]}" --methods system_prompt,diff_means \
    --alphas 0.05 0.1 0.2 --max-new-tokens 20 --batch-size 10 --out benchmarks/results/efficacy_qwen15b_more
python -c "from guardrail.evaluation.report import merge_reports; merge_reports(['benchmarks/results/efficacy_qwen15b/report.json', 'benchmarks/results/efficacy_qwen15b_more/report.json'], 'benchmarks/results/efficacy_qwen15b_all')"
