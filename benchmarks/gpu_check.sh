#!/usr/bin/env bash
# Every GPU check in one go, within 10 minutes on one GPU:
#   1. the trainer comparison on the GPU (ours vs the naive coursework loop), images/s, and the
#      achieved TFLOP/s of SegNet-VGG16 training set against the card's measured bf16 matmul rate
#      (torch.matmul 8192^3); conv FLOPs are counted from the model's conv layers, training = 3x forward;
#   2. a short sweep (8 enqueued configurations, 3 epochs) with 1 worker versus 4 workers sharing
#      the GPU, next to the naive single-process Optuna loop; and the memory of one worker over
#      20 short trials (host RSS and the GPU's max allocated memory).
# Results (JSON, logs, nvidia-smi) go to $OUT if set, else ./gpu_results; gpu_summary.json
# gathers the headline figures. Run from anywhere: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-./gpu_results}"
mkdir -p "$DEST"
PY="${PYTHON:-python}"
WORKERS="${GPU_CHECK_WORKERS:-1,4}"
DATA=()  # GPU_CHECK_DATA: the cmri folder where it is not at ../shared/data/cmri (bench.py's default)
[ -n "${GPU_CHECK_DATA:-}" ] && DATA=(--data "$GPU_CHECK_DATA")
status=0

nvidia-smi > "$DEST/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$DEST/nvidia-smi.txt"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device; nothing to check" | tee "$DEST/error.txt" >&2
    exit 1
fi

step() {  # step NAME SECONDS ARGS...: one bench.py run, JSON to $DEST/NAME.json, progress to NAME.log
    local name="$1" limit="$2"
    shift 2
    echo "gpu_check: $name (at most ${limit} s)" >&2
    if ! timeout "$limit" "$PY" -m benchmarks.bench --json --device cuda "${DATA[@]}" "$@" > "$DEST/$name.json" 2> "$DEST/$name.log"; then
        echo "gpu_check: $name failed or timed out; see $DEST/$name.log" >&2
        status=1
    fi
    tail -n 3 "$DEST/$name.log" >&2
}

step trainer 240 --quick --only trainer,peak
step sweep 300 --quick --only sweep,memory --workers "$WORKERS"

"$PY" - "$DEST" <<'EOF' || status=1
import json, sys
from pathlib import Path

dest = Path(sys.argv[1])
summary = {}
for name in ("trainer", "sweep"):
    try:
        result = json.loads((dest / f"{name}.json").read_text())
    except (OSError, ValueError) as err:
        summary[f"{name}_error"] = str(err)
        continue
    summary.setdefault("machine", result["machine"])
    summary.setdefault("data", result["data"])
    summary.update({k: v for k, v in result.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "total_s"})
    if result.get("errors"):
        summary[f"{name}_errors"] = result["errors"]
(dest / "gpu_summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF
exit $status
