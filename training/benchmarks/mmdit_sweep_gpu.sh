#!/usr/bin/env bash
# MM-DiT training recipes side by side on one GPU, each run to the steps its recipe takes on
# 2 CPU cores (the shipped batch; the shipped design ran 0.47 s/step in session 13 and 0.78 in session 21,
# dual attention and qk-norm cost 1.13–1.15× that, so they run SLOWER steps; docs/models.md),
# then exported and gated like the shipped model on two caption sets (--seed 0 and 1).
#
#   OUT=out MINUTES=5.5 bash benchmarks/mmdit_sweep_gpu.sh     # again on the warm machine to finish
#
# Batches, noise and σ are drawn on the CPU from (seed, step), so a variant sees the batches its
# CPU run would. Run folders live in RUNS (outside the repo copy, so a second call on the same
# warm machine resumes the unfinished ones; finished and gated variants are skipped).
# Writes OUT/summary.txt (gates, steps, steps/s, flow loss), OUT/results.tgz (logs, gate JSON,
# checkpoint JSON) and OUT/transformer-NAME.tgz for the best variants (EMA transformer + defaults).
set -u
OUT=${OUT:-out}
MINUTES=${MINUTES:-5.5}
RUNS=${RUNS:-/tmp/attnscope-sweep}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BANK=${BANK:-24000}   # smaller only to try the script out
N=${N:-200}           # held-out captions per gate
STEPS=${STEPS:-10000} # the shipped run's steps; LONG: about the whole 2-h CPU budget at 0.47 s/step
LONG=${LONG:-11500}
SLOWER=${SLOWER:-8800} # --dual-attention 4 and --qk-norm cost 1.13–1.15× the step on 2 cores: STEPS in the same time
KEEP=${KEEP:-5}       # transformers brought back (9.3 MB each)
COMPILE=${COMPILE:-}  # e.g. "--compile reduce-overhead" once benchmarks/mmdit_compile.py has shown it works there
UNET=src/attnscope/weights/shapes-unet
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"

SHIPPED="--cooldown 0.3 --sigma-mean 0.3 --sigma-std 0.8 --lr 3e-3"
SHAPES="--shape-weight cross=2 --shape-weight diamond=1.5 --shape-weight star=1.5"
declare -A VARIANTS=(
  [ship]="--steps $STEPS --seed 0"
  [ship-s1]="--steps $STEPS --seed 1"
  [shape]="--steps $STEPS --seed 0 $SHAPES"
  [shape-s1]="--steps $STEPS --seed 1 $SHAPES"
  [dual4]="--steps $SLOWER --seed 0 $SHAPES --dual-attention 4"
  [dual4-s1]="--steps $SLOWER --seed 1 $SHAPES --dual-attention 4"
  [qknorm]="--steps $SLOWER --seed 0 $SHAPES --qk-norm"
  [qknorm-s1]="--steps $SLOWER --seed 1 $SHAPES --qk-norm"
  [longshape]="--steps $LONG --seed 0 $SHAPES"
  [longshape-s1]="--steps $LONG --seed 1 $SHAPES"
)
flag_of() { [[ " ${VARIANTS[$1]} " =~ " --$2 "([^ ]+)" " ]] && echo "${BASH_REMATCH[1]}"; }   # e.g. flag_of ship seed
trained() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$RUNS/$1/checkpoint.json" 2>/dev/null || echo 0; }
finished() { [ "$(trained "$1")" -ge "$(flag_of "$1" steps)" ]; }

start=$(date +%s)
# one bank of scenes; REPA features depend on the seed, so seed 1 gets its own folder (same bank)
for seed in 0 1; do
  if [ ! -f "$RUNS/bank$seed/repa.json" ]; then
    if [ "$seed" = 1 ]; then mkdir -p "$RUNS/bank1"; cp "$RUNS/bank0"/bank.* "$RUNS/bank1/"; fi
    $PY -m training.train_mmdit --vae $UNET --out "$RUNS/bank$seed" --device $DEVICE --bank $BANK --seed $seed \
        --steps 0 --threads 8 >"$OUT/bank$seed.log" 2>&1 || { tail -20 "$OUT/bank$seed.log"; exit 1; }
  fi
done
echo "bank + REPA features: $(( $(date +%s) - start )) s"

# MPS lets the processes' small kernels share the GPU; without it they are time-sliced
if command -v nvidia-cuda-mps-control >/dev/null && ! pgrep -x nvidia-cuda-mps >/dev/null; then
  nvidia-cuda-mps-control -d 2>/dev/null
  if ! timeout 60 $PY -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>/dev/null; then
    echo quit | nvidia-cuda-mps-control; echo "MPS: off (a client failed)"
  else echo "MPS: on"; fi
fi

for name in "${!VARIANTS[@]}"; do
  finished "$name" && continue
  $PY -m training.train_mmdit --vae $UNET --out "$RUNS/$name" --bank-from "$RUNS/bank$(flag_of "$name" seed)" \
      --device $DEVICE --bank $BANK --threads 1 --every 1000000 --minutes "$MINUTES" $SHIPPED $COMPILE ${VARIANTS[$name]} \
      >>"$OUT/$name.log" 2>&1 &
done
( sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; grep -h "step" "$OUT"/ship.log | tail -1 ) &
wait
echo "training: $(( $(date +%s) - start )) s"

for name in "${!VARIANTS[@]}"; do
  finished "$name" || { echo "$name: $(trained "$name") steps, not finished"; continue; }
  ( [ -f "$RUNS/$name-export/model_index.json" ] ||
      $PY -m training.export mmdit --vae $UNET --run "$RUNS/$name" --guidance 7 --out "$RUNS/$name-export" >>"$OUT/$name.log" 2>&1
    for seed in 0 1; do
      [ -f "$RUNS/$name-gate$seed/results.json" ] ||
        $PY -m attnscope.cli eval --model "$RUNS/$name-export" --methods --n $N --guidance 7 --seed $seed --device $DEVICE \
            --batch $N --out "$RUNS/$name-gate$seed" >>"$OUT/$name.log" 2>&1 &
    done; wait ) &
done
wait
echo "export + gate: $(( $(date +%s) - start )) s"

$PY - "$RUNS" "$OUT" "$KEEP" "${!VARIANTS[@]}" <<'EOF'
import json, sys
from pathlib import Path
runs, out, keep, names = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rows = []
for name in names:
    path = runs / name / "checkpoint.json"
    check = json.loads(path.read_text()) if path.is_file() else {}
    recent = [loss for _, loss in check.get("flow_log", [])[-40:]]
    gates = []
    for seed in (0, 1):
        gate = runs / f"{name}-gate{seed}" / "results.json"
        gates.append(json.loads(gate.read_text())["quality_gate"] if gate.is_file() else None)
    both = sum(gates) / 2 if None not in gates else -1
    seconds = check.get("seconds", 0)
    rows.append((both, name, gates[0], gates[1], check.get("step"), round(seconds),
                 round(check.get("step", 0) / max(seconds, 1), 1), round(sum(recent) / max(len(recent), 1), 4)))
rows.sort(key=lambda row: row[0], reverse=True)
lines = ["mean gate\tvariant\tgate seed 0\tgate seed 1\tsteps\tseconds\tsteps/s\tflow (last 1,000 steps)"]
lines += ["\t".join(map(str, row)) for row in rows]
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
(out / "best.txt").write_text("\n".join(row[1] for row in rows[:keep] if row[0] >= 0) + "\n")
EOF
tar czf "$OUT/results.tgz" "$OUT"/*.log "$RUNS"/*-gate*/results.json "$RUNS"/*/checkpoint.json 2>/dev/null
for name in $(cat "$OUT/best.txt"); do
  tar czf "$OUT/transformer-$name.tgz" -C "$RUNS/$name-export" transformer attnscope_defaults.json
done
rm -f "$OUT"/*.log "$OUT/best.txt"
echo "total: $(( $(date +%s) - start )) s"
