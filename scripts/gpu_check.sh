#!/usr/bin/env bash
# The one GPU check (scripts/gpu_check.py): GPU tests, the Frank-Wolfe bench on the Qwen2.5-Math-1.5B shape
# and a few SFT/GRPO/LatentRevise steps through the torch paths, all figures in one JSON file.
# Needs only torch + transformers + accelerate (+ pytest): no vLLM, no sqlalchemy, no data, no network.
#   bash scripts/gpu_check.sh [OUT.json]        (default gpu_check.json; ~8 min at most, then it is stopped)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
# each part writes its figures as it ends: a run stopped at the limit keeps the parts that finished
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_LIMIT_S:-480}" "$PY" scripts/gpu_check.py --out "${1:-gpu_check.json}"
