#!/bin/bash
# A venv here with the lent GPU machine's packages (scripts/device_machine.txt: torch 2.11.0+cu130, torchvision
# 0.26.0, pytorch-lightning 2.6.6, ...) and what the session brings it (scripts/gpu_kit.txt), so that the session
# script is dry-run against the torch it will meet before any device time is spent (the project pins torch 2.14.1):
#   bash scripts/device_venv.sh
#   SKIP_PIP=1 PY=.venv-device/bin/python TINY=1 IMAGES=64 OUT=/tmp/dry bash scripts/gpu_bench_session.sh
# pip takes torch 2.11 from PyPI (a CUDA 13 build: about 4 GB with its NVIDIA libraries; it runs on the CPU here).
# The machine's Python is 3.12; this one is the host's. Rebuilt when either list changes; a failed build is retried.
set -euo pipefail
cd "$(dirname "$0")/.."
V=${V:-.venv-device}
STAMP="$V/.installed"
WANT=$(cat scripts/device_machine.txt scripts/gpu_kit.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then echo "$V is up to date"; exit 0; fi
rm -rf "$V"
"${PYTHON:-python3}" -m venv "$V" || { rm -rf "$V"; exit 1; }
"$V/bin/python" -m pip install -q -r scripts/device_machine.txt -r scripts/gpu_kit.txt setuptools wheel
"$V/bin/python" -c "import torch, torchvision, pytorch_lightning as pl, hydra, albumentations, torchdata
print('$V:', 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', pl.__version__)"
echo "$WANT" > "$STAMP"
