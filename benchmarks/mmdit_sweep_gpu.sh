#!/usr/bin/env bash
# MM-DiT training variants side by side on one GPU, each capped at the steps that 80 minutes on
# 2 CPU cores reach with the same flags (docs/models.md), then exported and gated like the shipped model.
#
#   OUT=out MINUTES=6 bash benchmarks/mmdit_sweep_gpu.sh
#
# Batches are drawn on the CPU from (seed, step), so a variant sees the batches its CPU run would.
# Measured (docs/models.md): on one H200 each process ran about 10 steps/s whether 2 or 8 ran at
# once (host-bound), so MINUTES=5 reached about 3,000 steps, not the caps.
# Writes OUT/summary.txt (gate, steps, last flow losses per variant), OUT/results.tgz (logs, gate
# JSON) and OUT/transformer-NAME.tgz for the best variants.
set -u
OUT=${OUT:-out}
MINUTES=${MINUTES:-6}
RUNS=${RUNS:-runs/gpu-sweep}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BANK=${BANK:-24000}   # smaller only to try the script out
N=${N:-200}           # held-out captions per gate
UNET=src/attnscope/models/weights/shapes-unet
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"

# steps in 80 CPU minutes: design 3 reached 8,541; --heads 6 costs 1.63x per step
declare -A VARIANTS=(
  [base]="--steps 8541"
  [cool3]="--steps 8541 --cooldown 0.3"
  [repa1]="--steps 8541 --repa 1.0"
  [lr1e3]="--steps 8541 --lr 1e-3"
  [lr1e3cool3]="--steps 8541 --lr 1e-3 --cooldown 0.3"
  [block1]="--steps 8541 --repa-block 1"
  [heads6]="--steps 5240 --heads 6"
  [long]="--steps 1000000"
)

train() {
  local name=$1; shift
  $PY -m attnscope.models.train_mmdit --vae $UNET --out "$RUNS/$name" --bank-from "$RUNS/bank" --device $DEVICE --bank $BANK \
      --threads 2 --every 1000000 --minutes "$MINUTES" "$@" >"$OUT/$name.log" 2>&1
}

start=$(date +%s)
$PY -m attnscope.models.train_mmdit --vae $UNET --out "$RUNS/bank" --device $DEVICE --bank $BANK --steps 0 >"$OUT/bank.log" 2>&1 \
  || { tail -20 "$OUT/bank.log"; exit 1; }
echo "bank + REPA features: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader

for name in "${!VARIANTS[@]}"; do train "$name" ${VARIANTS[$name]} & done
( sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; grep -h "step" "$OUT"/base.log | tail -1 ) &
wait
echo "training: $(( $(date +%s) - start )) s"

for name in "${!VARIANTS[@]}"; do
  ( $PY -m attnscope.models.export mmdit --vae $UNET --run "$RUNS/$name" --guidance 7 --out "$RUNS/$name-export" >>"$OUT/$name.log" 2>&1 &&
    $PY -m attnscope.cli eval --model "$RUNS/$name-export" --methods --n $N --guidance 7 --device $DEVICE --batch 50 \
        --out "$RUNS/$name-gate" >>"$OUT/$name.log" 2>&1 ) &
done
wait
echo "export + gate: $(( $(date +%s) - start )) s"

$PY - "$RUNS" "$OUT" ${!VARIANTS[@]} <<'EOF'
import json, sys
from pathlib import Path
runs, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = []
for name in names:
    gate = runs / f"{name}-gate" / "results.json"
    check = json.loads((runs / name / "checkpoint.json").read_text()) if (runs / name / "checkpoint.json").is_file() else {}
    flow = check.get("flow_log", [])
    recent = [loss for step, loss in flow[-40:]]
    result = json.loads(gate.read_text()) if gate.is_file() else {}
    rows.append((result.get("quality_gate", -1), name, check.get("step"), round(check.get("seconds", 0)),
                 round(sum(recent) / max(len(recent), 1), 4), result.get("quality_by_objects"), result.get("colors_exact")))
rows.sort(reverse=True)
lines = ["gate\tvariant\tsteps\tseconds\tflow(last 1000)\tby objects\tcolours exact"]
lines += ["\t".join(map(str, row)) for row in rows]
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
(out / "best.txt").write_text("\n".join(name for _, name, *_ in rows[:5]) + "\n")
EOF
tar czf "$OUT/results.tgz" "$OUT"/*.log "$RUNS"/*-gate/results.json "$RUNS"/*/checkpoint.json 2>/dev/null
for name in $(cat "$OUT/best.txt"); do
  [ -d "$RUNS/$name-export/transformer" ] && tar czf "$OUT/transformer-$name.tgz" -C "$RUNS/$name-export" transformer attnscope_defaults.json
done
rm -f "$OUT"/*.log "$OUT/best.txt"
echo "total: $(( $(date +%s) - start )) s"
