#!/usr/bin/env bash
# The GPU checks of the model issue, in one run on a machine with torch, transformers and triton
# but no Ray (see README, "GPU checks"): FlexAttention and cuDNN parity on CUDA, the attention
# bench, and the model bench (tokens/s and MFU, eager and compiled, against Hugging Face Llama).
# Usage: scripts/gpu_checks.sh OUT_DIR   (wheels of missing packages, if any, in .whl/)
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=platform:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/device.txt"
timeout 330 python3 -m llmlab.bench.model --device cuda --profile 20 2>&1 | tee "$out/model.txt"
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_attention_patterns.py tests/test_cuda.py tests/test_model.py 2>&1 | tail -25 | tee "$out/tests.txt"
timeout 100 python3 -m llmlab.bench.attention --device cuda --heads 16 --batch 2 --repeats 2 2>&1 | tee "$out/attention.txt"
