#!/usr/bin/env bash
# The GPU check of issue 13, as one script for a lent CUDA machine (a few minutes on one H100/H200):
#   1. benchmarks/bench_engine.py --device cuda: the paper networks (BLPSeg R101 + UPerNet, DeepLab-v2 R101, the
#      CDSP DeepLab-v3+ R101 OS8) in fp32, bf16 and bf16 + channels_last, then bf16 + channels_last + torch.compile
#      (last: compilation takes the longest);
#   2. the demo's methods end to end on CUDA, on freshly generated demo data, with random initialisation (the
#      bundled ImageNet weights are a CPU-side pip package): BLPSeg (LAM), BES (CAM, boundary net, random walk, CRF
#      on the GPU), CDSP (distance maps, LoRM), partial CE under torchrun.
# Usage: OUT=<folder> bash benchmarks/gpu_check.sh   (PY=python3 by default; results and logs under $OUT)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
OUT=${OUT:-work_dirs/gpu_check}
DEV=${DEV:-cuda}
TMP=${TMP_DIR:-/tmp/weakseg_gpu_check}
mkdir -p "$OUT" "$TMP"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; } 2>&1 | tee "$OUT/gpu.txt"

if [ "$DEV" = cuda ]; then
    timeout 180 $PY benchmarks/bench_engine.py --device cuda --iters 10 --variants fp32 bf16 "bf16 + channels_last" \
        --out "$OUT/engine_cuda" 2>&1 | tee "$OUT/bench.log"
fi

D=$TMP/data
$PY -m weakseg data synth --variant demo --out "$D" --num 160 > /dev/null
COMMON=(--set engine.device=$DEV --set data.root=$D --set model.pretrained=null --set schedule.iters=60)
run() {  # name, seconds, command...
    local name=$1 secs=$2; shift 2
    local t0=$SECONDS
    timeout "$secs" "$@" > "$TMP/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - t0)) s; $(grep -ho 'mIoU [0-9.]*' "$TMP/$name.log" | tr '\n' ' ')"
    [ $rc = 0 ] || tail -n 15 "$TMP/$name.log"
}
{
run blpseg 60 $PY -m weakseg train configs/demo/blpseg.yaml "${COMMON[@]}" --set engine.work_dir=$TMP/blpseg
run bes 100 $PY -m weakseg run configs/demo/bes.yaml "${COMMON[@]}" --set engine.work_dir=$TMP/bes \
    --set method.cam.model.pretrained=null --set method.boundary.model.pretrained=null \
    --set method.cam.schedule.epochs=2 --set method.boundary.schedule.epochs=2
run cdsp 100 $PY -m weakseg run configs/demo/cdsp.yaml "${COMMON[@]}" --set engine.work_dir=$TMP/cdsp \
    --set method.cam.model.pretrained=null --set method.cam.schedule.epochs=2
run partial_ce_torchrun 60 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m weakseg train \
    configs/demo/partial_ce.yaml "${COMMON[@]}" --set engine.work_dir=$TMP/pce
} 2>&1 | tee "$OUT/methods.log"

if [ "$DEV" = cuda ]; then
    timeout 120 $PY benchmarks/bench_engine.py --device cuda --iters 10 --variants "bf16 + channels_last + compile" \
        --out "$OUT/engine_cuda_compile" 2>&1 | tee "$OUT/compile.log"
fi
