#!/bin/bash
# What scripts/gpu_bench_session.sh needs on the lent GPU machine (Python 3.12, torch and Lightning there; no
# internet): builds the two git-excluded folders to carry with run(..., carry=[".whl", ".gpudata"]):
#   .whl/      cp312 wheels of the packages that machine lacks, as pinned in scripts/gpu_kit.txt (antlr4 is an sdist
#              only: built here); made afresh each time, so no wheel of an older pin is left to clash
#   .gpudata/  a copy of ../shared/data/widerface/mini_val (the CUDA data-path test reads it; ../shared does not travel)
# PY= the Python whose pip downloads (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NEW=.whl.new
rm -rf "$NEW"
ANTLR=$(grep '^antlr4' scripts/gpu_kit.txt || true)
"$PY" -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$NEW" \
  -r <(grep -v '^antlr4' scripts/gpu_kit.txt)
[ -z "$ANTLR" ] || "$PY" -m pip wheel -q --no-deps -w "$NEW" "$ANTLR"
rm -rf .whl && mv "$NEW" .whl
SHARED=${GRIDFACE_SHARED_DATA:-../shared/data}
mkdir -p .gpudata/shared/widerface
[ -d .gpudata/shared/widerface/mini_val ] || cp -r "$SHARED/widerface/mini_val" .gpudata/shared/widerface/
echo "$(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)), $(ls .gpudata/shared/widerface/mini_val | wc -l) entries in .gpudata/shared/widerface/mini_val"
