#!/bin/bash
# The device session's script, as it ran (from .gpudata/, carried with .whl/ to the H200 machine):
#   BENCH_S=270 TEST_S=140 COMPILE_S=50 bash run.sh
# .whl/ held cp312 wheels of what the machine lacks (hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3,
# albumentations 2.0.8, albucore 0.0.24, pydantic 2.14.4, pydantic_core 2.50.5, annotated-types, typing-inspection,
# typing_extensions, simsimd, stringzilla, faster-coco-eval 1.8.0, torch-pruning 1.6.1, torchdata 0.11.0);
# .gpudata/shared/widerface/mini_val a copy of ../shared/data's 19 images for the CUDA data-path test.
T0=$(date +%s)
[ -n "$SKIP_PIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 GRIDFACE_SHARED_DATA=$PWD/.gpudata/shared
nvidia-smi > $OUT/nvidia.txt 2>&1
python3 -c "import torch, pytorch_lightning as pl; print(torch.__version__, torch.version.cuda, pl.__version__, torch.cuda.get_device_name(0))" | tee $OUT/versions.txt
B=/tmp/bench
timeout ${BENCH_S:-300} python3 scripts/bench_gpu.py --out $B --data /tmp/wider --images ${IMAGES:-4096} ${TINY:+--tiny} > $OUT/bench.log 2>&1
echo "bench rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
cp $B/gpu_bench.json $B/gpu_bench.md $OUT/ 2>/dev/null
timeout ${TEST_S:-170} python3 -m pytest -p no:cacheprovider -q -rs -m gpu tests/test_gpu_data.py tests/test_gpu.py > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
timeout ${COMPILE_S:-60} python3 scripts/bench_gpu.py --out $B --compile-only ${TINY:+--tiny} > $OUT/compile.log 2>&1
echo "compile rc $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/versions.txt
cp $B/gpu_bench.json $B/gpu_bench.md $OUT/ 2>/dev/null
tail -5 $OUT/pytest_gpu.log; cat $OUT/gpu_bench.md
