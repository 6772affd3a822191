#!/bin/bash
# What scripts/gpu_bench_session.sh needs on the lent GPU machine (Python 3.12, torch and Lightning there; no
# internet): builds the two git-excluded folders to carry with run(..., carry=[".whl", ".gpudata"]):
#   .whl/      cp312 wheels of the packages that machine lacks (scripts/gpu_kit.txt; antlr4 is an sdist: built here)
#   .gpudata/  a copy of ../shared/data/widerface/mini_val (the CUDA data-path test reads it; ../shared does not travel)
# Idempotent; PY= the Python whose pip downloads (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
# antlr4 4.9.3 is an sdist only: every other line of gpu_kit.txt is downloaded as a cp312 wheel, antlr4 built here
grep -v -e '^#' -e '^antlr4' scripts/gpu_kit.txt | $PY -m pip download -q --only-binary=:all: --no-deps \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d .whl -r /dev/stdin
ls .whl/antlr4_python3_runtime-*.whl > /dev/null 2>&1 || $PY -m pip wheel -q --no-deps -w .whl \
  "$(grep '^antlr4' scripts/gpu_kit.txt)"
SHARED=${GRIDFACE_SHARED_DATA:-../shared/data}
mkdir -p .gpudata/shared/widerface
[ -d .gpudata/shared/widerface/mini_val ] || cp -r "$SHARED/widerface/mini_val" .gpudata/shared/widerface/
echo "$(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)), $(ls .gpudata/shared/widerface/mini_val | wc -l) entries in .gpudata/shared/widerface/mini_val"
