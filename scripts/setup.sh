#!/usr/bin/env bash
# Creates .venv and installs llmlab with its dev tools. On a machine without an NVIDIA GPU it
# installs the CPU build of torch first: an unpinned torch would pull several GB of CUDA
# packages. Off this workplace, point LLMLAB_TORCH_INDEX at a CPU wheel index
# (e.g. https://download.pytorch.org/whl/cpu) to get the CPU build of the pinned torch.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  quiet "${pip[@]}" "torch>=2.6"
else
  quiet "${pip[@]}" "torch==2.13.0" ${LLMLAB_TORCH_INDEX:+--index-url "$LLMLAB_TORCH_INDEX"}
fi
quiet "${pip[@]}" -e ".[dev]"
"$venv/bin/python" -c "import llmlab, torch, ray, mlflow; print('llmlab', llmlab.__version__, '| torch', torch.__version__, '| ray', ray.__version__, '| mlflow', mlflow.__version__)"
