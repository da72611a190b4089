#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md in one call: the decode table in float32 and bfloat16, then the
# half-precision parity report and the daily DAG's model work for 256 symbols. Writes to $1 (default
# bench/results/gpu): one JSON and one Markdown table per part, and each part's stderr.
#
#     bash bench/gpu.sh [OUTPUT_FOLDER]
#
# PARTS="parity decode-float32" runs only those parts. Runs with the machine's own python3 (torch with CUDA, numpy, pandas, safetensors); nothing else needed.
set -u
out=${1:-bench/results/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$python -c "import torch, pandas, numpy; print('torch', torch.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)" | tee -a "$out/gpu.txt"
status=0
run() {  # name, seconds, arguments...
    local name=$1 limit=$2
    shift 2
    echo "== $name" >&2
    timeout "$limit" $python bench/decode.py --device cuda --json "$out/$name.json" "$@" >"$out/$name.md" 2>"$out/$name.err" || {
        echo "$name failed (exit $?):" >&2
        tail -5 "$out/$name.err" >&2
        status=1
    }
    cat "$out/$name.md"
}
parts=${PARTS:-parity decode-float32 decode-bfloat16}
[[ " $parts " == *" parity "* ]] && run parity "${PARITY_LIMIT:-150}" --parity
[[ " $parts " == *" decode-float32 "* ]] && run decode-float32 "${DECODE_LIMIT:-240}"
[[ " $parts " == *" decode-bfloat16 "* ]] && run decode-bfloat16 "${DECODE_LIMIT:-240}" --dtype bfloat16
exit $status
