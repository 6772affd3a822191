#!/bin/bash
# A venv here with the lent GPU machine's versions (torch 2.11.0+cu130, torchvision 0.26.0, pytorch-lightning 2.6.6,
# and scripts/gpu_kit.txt's packages as .whl/ brings them), so that the session script is dry-run against the torch
# it will meet before any device time is spent (the project pins torch 2.14.1 for users; the machine has 2.11):
#   bash scripts/device_venv.sh
#   SKIP_PIP=1 PY=.venv-device/bin/python TINY=1 IMAGES=64 OUT=/tmp/dry bash scripts/gpu_bench_session.sh
# pip takes torch 2.11 from PyPI (a CUDA 13 build: about 4 GB with its NVIDIA libraries; it runs on the CPU here).
# The machine's Python is 3.12; this one is the host's (3.11 here). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
V=${V:-.venv-device}
[ -x $V/bin/python ] || ${PYTHON:-python3} -m venv $V
[ -f $V/.installed ] && { echo "$V is ready"; exit 0; }
$V/bin/pip install -q torch==2.11.0 torchvision==0.26.0 pytorch-lightning==2.6.6 numpy scipy scikit-learn \
  opencv-python-headless numba onnx onnxruntime pytest setuptools wheel -r scripts/gpu_kit.txt
touch $V/.installed
$V/bin/python -c "import torch, torchvision, pytorch_lightning as pl; print('$V:', torch.__version__, torchvision.__version__, pl.__version__)"
