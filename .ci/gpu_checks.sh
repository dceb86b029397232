#!/usr/bin/env bash
# The checks that need a GPU, in one script for a lent CUDA machine (CI has none):
#   .ci/gpu_checks.sh tests bench          # CUDA tests, then the attention benchmark at 1024² (ViT-B, ViT-L)
#   .ci/gpu_checks.sh sweep                # the default rank_ablation sweep, SHARDS processes sharing the GPU for
#                                          # SWEEP_S seconds (SWEEP_ARGS: more rank_ablation flags, e.g.
#                                          # "--seeds 0,1"); the finished cells come back in $OUT/sweep.tgz
#   SWEEP_SCRIPT=task_scaling.py SWEEP_ARGS="--epochs 15 --eval-every 3" .ci/gpu_checks.sh sweep
#                                          # the same for the task-scaling sweep (its CPU cells in docs/sweeps ran
#                                          # --amp auto, i.e. off on a CPU: another setting, so they are not reused)
# Missing pure-Python packages travel as wheels in .whl/ (segment-anything, tensorly); results go to $OUT
# (default runs/gpu_checks). Each part has its own time limit, so one that hangs leaves the others' results.
set -uo pipefail
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TENSORADAPT_CACHE=${TENSORADAPT_CACHE:-/tmp/tensoradapt-cache}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

for part in "$@"; do
  case $part in
  tests)
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_sam_attention.py 2>&1 \
      | tee "$OUT/tests.log" ;;
  bench)
    timeout 200 python3 experiments/benchmarks/bench_attention.py --model vit_b --image-size 1024 --batch 1 \
      --device cuda --amp bf16 --repeats 5 --out "$OUT/bench_attention_vit_b.json" 2>&1 | tee "$OUT/bench_vit_b.log"
    timeout 240 python3 experiments/benchmarks/bench_attention.py --model vit_l --image-size 1024 --batch 2 \
      --device cuda --amp bf16 --repeats 3 --out "$OUT/bench_attention_vit_l.json" 2>&1 | tee "$OUT/bench_vit_l.log" ;;
  sweep)
    SCRIPT=experiments/${SWEEP_SCRIPT:-rank_ablation.py}; SWEEP=/tmp/$(basename "$SCRIPT" .py); mkdir -p "$SWEEP/logs"
    for i in $(seq 0 $((${SHARDS:-8} - 1))); do
      timeout "${SWEEP_S:-390}" python3 "$SCRIPT" --device cuda --amp off --threads 1 \
        --num-workers 1 --shard "$i/${SHARDS:-8}" --out "$SWEEP" ${SWEEP_ARGS:-} > "$SWEEP/logs/shard_$i.log" 2>&1 &
    done
    wait
    python3 "$SCRIPT" --table-only --out "$SWEEP" 2>&1 | tail -1
    tar czf "$OUT/sweep.tgz" --exclude='*.pt' -C "$SWEEP" . ;;
  *) echo "unknown part $part (tests, bench, sweep)"; exit 2 ;;
  esac
done
