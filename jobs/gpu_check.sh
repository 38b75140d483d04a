#!/usr/bin/env bash
# Every GPU check in one run, about 6 minutes on one H100:
#   bash jobs/gpu_check.sh            # logs and JSON rows under $OUT (default: gpu-check/)
# 1. tests/test_cuda.py and the CUDA test of tests/test_engine_sync.py (the Ray ones are left out,
#    and named, where `import ray` fails);
# 2. jobs/bench_pipeline.py --device cuda: the device pipeline on the GPU vs the loader per core,
#    grey 28 px and RGB, at 32 and 224 px;
# 3. jobs/bench.py: step time per run.precision (fp32, bf16, auto), DeiT-Ti at 32 and 224 px, batch 128;
# 4. jobs/bench_pipeline.py --epoch: an epoch of the digits preset, device pipeline vs loader;
# 5. jobs/bench_gpu.py: images/s, step time, MFU, compiled rows and trials packed on the GPU.
# Each step runs under its own time limit, so one that hangs costs only its own rows. STEPS picks some:
#   STEPS="tests bench-gpu" bash jobs/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py - <<'EOF'
import os, torch, torchvision, timm
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
      f"{torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, {os.cpu_count()} CPUs")
EOF
grep -m1 "model name" /proc/cpuinfo

steps=" ${STEPS:-tests pipeline pipeline-rgb precision epoch bench-gpu} "
step() {  # step LIMIT_S NAME COMMAND...: its output to $out/NAME.log, its last lines here
    local limit=$1 name=$2
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name ($*)"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL:-12}" "$out/$name.log"
    echo "== $name: exit $rc"
}

deselect=()
if ! $py -c "import ray" 2>/dev/null; then
    echo "ray is not installed here: leaving out the tests that start a Ray head or import ray"
    deselect=(-k "not ray_train_run and not share_one_gpu and not gpu_share")
elif ! $py -c "import mlflow" 2>/dev/null; then
    echo "mlflow is not installed here: leaving out the packed-sweep tests (a sweep tracks its trials)"
    deselect=(-k "not share_one_gpu")
fi
TAIL=14 step 240 tests $py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine_sync.py "${deselect[@]}"
step 120 pipeline $py jobs/bench_pipeline.py --device cuda --images 20480 --json "$out/pipeline.json"
step 90 pipeline-rgb $py jobs/bench_pipeline.py --device cuda --images 8192 --repeats 2 --rgb --json "$out/pipeline-rgb.json"
TAIL=9 step 120 precision $py jobs/bench.py --device cuda --batch-size 128 --steps 20 --warmup 5 --precisions fp32 bf16 auto --no-lg
TAIL=3 step 90 epoch $py jobs/bench_pipeline.py --epoch --device cuda
TAIL=20 step 240 bench-gpu $py jobs/bench_gpu.py --budget-s 120 --json "$out/bench-gpu.json"
