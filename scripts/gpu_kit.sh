#!/bin/bash
# What scripts/gpu_bench_session.sh needs on the lent GPU machine (Python 3.12, torch and Lightning there; no
# internet): builds the two git-excluded folders to carry with run(..., carry=[".whl", ".gpudata"]):
#   .whl/      cp312 wheels of the packages that machine lacks (antlr4 4.9.3 is an sdist only: built here)
#   .gpudata/  a copy of ../shared/data/widerface/mini_val (the CUDA data-path test reads it; ../shared does not travel)
# Idempotent; PY= the Python whose pip downloads (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
$PY -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2 \
  faster-coco-eval==1.8.0 torch-pruning==1.6.1 torchdata==0.11.0
ls .whl/antlr4_python3_runtime-4.9.3-*.whl > /dev/null 2>&1 || $PY -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
SHARED=${GRIDFACE_SHARED_DATA:-../shared/data}
mkdir -p .gpudata/shared/widerface
[ -d .gpudata/shared/widerface/mini_val ] || cp -r "$SHARED/widerface/mini_val" .gpudata/shared/widerface/
echo "$(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)), $(ls .gpudata/shared/widerface/mini_val | wc -l) entries in .gpudata/shared/widerface/mini_val"
