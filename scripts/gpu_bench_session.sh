#!/bin/bash
# One GPU session's measurements for issue #21 in one command (bench_gpu.py's (a)-(c) with the hybrid path, the build thread and
# torch.compile end to end, then `pytest -m gpu`), for a lent device machine without the project's extras:
#   BENCH_S=420 TEST_S=150 bash scripts/gpu_bench_session.sh        (OUT=<folder> for the results; default /tmp/out)
# Prepare here, both git-excluded, and carry them:
# .whl/: cp312 wheels of what the machine lacks (hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3,
# albumentations 2.0.8, albucore 0.0.24, pydantic 2.14.4, pydantic_core 2.50.5, annotated-types 0.8.0,
# typing-inspection 0.4.5, typing_extensions 4.16.0, simsimd 6.5.16, stringzilla 5.3.2, faster-coco-eval 1.8.0,
# torch-pruning 1.6.1, torchdata 0.11.0); .gpudata/shared/widerface/mini_val: a copy of ../shared/data's 19 images:
#   mkdir -p .whl && (cd .whl && ../.venv/bin/python -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 albumentations==2.0.8 albucore==0.0.24 \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
#     simsimd==6.5.16 stringzilla==5.3.2 faster-coco-eval==1.8.0 torch-pruning==1.6.1 torchdata==0.11.0)
#   (antlr4 4.9.3 is an sdist only: `pip wheel antlr4-python3-runtime==4.9.3 -w .whl` once)
#   mkdir -p .gpudata/shared/widerface && cp -r ../shared/data/widerface/mini_val .gpudata/shared/widerface/
# then run(command="BENCH_S=420 TEST_S=150 bash scripts/gpu_bench_session.sh", carry=[".whl", ".gpudata"]).
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
[ -n "$SKIP_PIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 GRIDFACE_SHARED_DATA=$PWD/.gpudata/shared
PY=${PY:-python3}
nvidia-smi > $OUT/nvidia.txt 2>&1
$PY -c "import torch, pytorch_lightning as pl; print(torch.__version__, torch.version.cuda, pl.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')" | tee $OUT/versions.txt
git log -1 --format='tree at commit %h %s' >> $OUT/versions.txt 2>/dev/null; git status --short | head -20 >> $OUT/versions.txt
B=/tmp/bench; rm -rf $B
timeout ${BENCH_S:-420} $PY scripts/bench_gpu.py --out $B --data /tmp/wider --images ${IMAGES:-4096} --compile-train ${TINY:+--tiny} > $OUT/bench.log 2>&1
echo "bench rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
cp $B/gpu_bench.json $B/gpu_bench.md $OUT/ 2>/dev/null
timeout ${TEST_S:-140} $PY -m pytest -p no:cacheprovider -q -rs -m gpu tests/test_gpu_data.py tests/test_gpu.py > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
tail -8 $OUT/pytest_gpu.log; cat $OUT/gpu_bench.md
