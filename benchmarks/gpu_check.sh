#!/usr/bin/env bash
# The GPU check in one call on a machine with one NVIDIA GPU (under 8 minutes on an H200): the seed and fast presets
# at 32-true, 16-mixed and bf16-mixed precision; see benchmarks/gpu_check.py for what it records.
#
# Such a machine may offer torch, lightning, torchmetrics, tensorboard and torchvision but reach no network, so this
# installs what else it needs from files carried beside the checkout:
#   .whl/   wheels of the missing packages (jsonargparse and its needs: docstring-parser, typeshed-client,
#           typing-extensions; PyYAML if absent), for that machine's Python
#   .mnist/ the MNIST files: a copy of ~/.cache/mnist_lightning/MNIST/raw as .mnist/MNIST/raw
# With the workplace's device tool: run `bash benchmarks/gpu_check.sh` carrying [".whl", ".mnist"]; the results land
# in $OUT (or benchmarks/results without it).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .mnist ]; then export MNIST_LIGHTNING_DATA="$PWD/.mnist"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
exec python3 benchmarks/gpu_check.py --output "${OUT:-benchmarks/results}" "$@"
