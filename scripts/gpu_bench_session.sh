#!/bin/bash
# One GPU session's measurements for issue #21 in one command (bench_gpu.py's (a)-(c) with the hybrid path, the
# build thread and torch.compile end to end, then `pytest -m gpu`), for a lent device machine without the extras:
#   BENCH_S=400 TEST_S=170 bash scripts/gpu_bench_session.sh        (OUT=<folder> for the results; default /tmp/out)
# Prepare here, both git-excluded, and carry them: `bash scripts/gpu_kit.sh` builds .whl/ (cp312 wheels of what the
# machine lacks, pinned in scripts/gpu_kit.txt) and .gpudata/shared/widerface/mini_val (a copy of ../shared/data's
# 19 images, for the CUDA test);
# then run(command="BENCH_S=400 TEST_S=170 bash scripts/gpu_bench_session.sh", carry=[".whl", ".gpudata"]).
# Dry-run it here first against the machine's torch 2.11 (`bash scripts/device_venv.sh` builds .venv-device):
#   SKIP_PIP=1 PY=.venv-device/bin/python TINY=1 IMAGES=64 OUT=/tmp/dry bash scripts/gpu_bench_session.sh
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
[ -n "$SKIP_PIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 GRIDFACE_SHARED_DATA=$PWD/.gpudata/shared
PY=${PY:-python3}
nvidia-smi > $OUT/nvidia.txt 2>&1
$PY -c "import torch, pytorch_lightning as pl; print(torch.__version__, torch.version.cuda, pl.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')" | tee $OUT/versions.txt
git log -1 --format='tree at commit %h %s' >> $OUT/versions.txt 2>/dev/null; git status --short | head -20 >> $OUT/versions.txt
B=$(mktemp -d /tmp/gridface-gpu-bench.XXXXXX)   # its own folder: nothing of an earlier run is reused or removed
timeout ${BENCH_S:-400} $PY scripts/bench_gpu.py --out $B --data $B/wider --images ${IMAGES:-4096} --compile-train ${TINY:+--tiny} > $OUT/bench.log 2>&1
echo "bench rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
cp $B/gpu_bench.json $B/gpu_bench.md $OUT/ 2>/dev/null
timeout ${TEST_S:-170} $PY -m pytest -p no:cacheprovider -q -rs -m gpu tests/test_gpu_data.py tests/test_gpu.py > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
tail -8 $OUT/pytest_gpu.log; cat $OUT/gpu_bench.md 2>/dev/null || tail -20 $OUT/bench.log
