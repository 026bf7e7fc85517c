#!/usr/bin/env bash
# Weight formats side by side on bench-moe-2.7b (hidden 2048, 16 layers, 16 q / 8 kv heads × 128,
# 16 experts + shared, top-1, expert width 1024, vocab 202048; random bf16 weights from
# `herd synth`): file size, the resident bytes `herd inspect` predicts, measured peak RSS of a
# load plus a short generation, load + prefill time and decode speed.
#
#   tools/bench/weights.sh            # builds herd (release) if needed; ~12 GB of disk in $BENCH_DIR
#
# Prints a table, then one JSON line. Speeds are for orientation only (issue 8 owns them); the
# memory columns are what this bench is for.
set -euo pipefail
cd "$(dirname "$0")/../.."

HERD=${HERD:-target/release/herd}
DIR=${BENCH_DIR:-/tmp/herd-bench}
THREADS=${RAYON_NUM_THREADS:-$(nproc)}
[ -x "$HERD" ] || cargo build --release -p herd-cli
mkdir -p "$DIR"

[ -f "$DIR/bf16/model.safetensors" ] || "$HERD" synth --preset bench-moe-2.7b --out "$DIR/bf16" --quiet
[ -f "$DIR/q8_0.gguf" ] || "$HERD" quantize --model "$DIR/bf16" --out "$DIR/q8_0.gguf" --type Q8_0 --quiet
[ -f "$DIR/q4_k_m.gguf" ] || "$HERD" quantize --model "$DIR/bf16" --out "$DIR/q4_k_m.gguf" --type Q4_K_M --quiet

PROMPT=$(seq -s, 1000 1063)   # 64 prompt tokens
rows=()
json="{\"bench\":\"weights\",\"model\":\"bench-moe-2.7b\",\"threads\":$THREADS,\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\",\"formats\":["
sep=""
run() { # label model-path extra-args...
    local label=$1 model=$2; shift 2
    local file_bytes
    if [ -d "$model" ]; then file_bytes=$(stat -c %s "$model/model.safetensors"); else file_bytes=$(stat -c %s "$model"); fi
    local resident
    resident=$("$HERD" inspect --model "$model" "$@" | sed -n 's/^resident weights.*(\([0-9]*\) B)$/\1/p')
    local t0 t1 summary
    t0=$(date +%s.%N)
    summary=$("$HERD" generate --model "$model" "$@" --tokens "$PROMPT" --max-new-tokens 16 --temperature 0 --ignore-eos 2>&1 >/dev/null | tail -1)
    t1=$(date +%s.%N)
    local peak prefill decode wall
    peak=$(sed -n 's/.*peak RSS \([0-9.]*\) MB.*/\1/p' <<<"$summary")
    prefill=$(sed -n 's/.*prefill \([0-9.]*\) ms.*/\1/p' <<<"$summary")
    decode=$(sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p' <<<"$summary")
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    rows+=("$(awk -v l="$label" -v f="$file_bytes" -v r="$resident" -v p="$peak" -v pre="$prefill" -v d="$decode" -v w="$wall" \
        'BEGIN { printf "%-22s %9.2f %11.2f %11.2f %9.3f %10.1f %10.2f %8.1f", l, f/1e9, r/1e9, p/1e3, p*1e6/f, pre, d, w }')")
    json+="$sep{\"format\":\"$label\",\"file_bytes\":$file_bytes,\"resident_bytes\":$resident,\"peak_rss_mb\":$peak,\"prefill_ms\":$prefill,\"decode_tok_s\":$decode,\"wall_s\":$wall}"
    sep=","
}
run "bf16 (safetensors)" "$DIR/bf16"
run "Q8_0 (GGUF)" "$DIR/q8_0.gguf"
run "Q4_K_M (GGUF)" "$DIR/q4_k_m.gguf"
run "Q4_K_M (--quant q4_k)" "$DIR/bf16" --quant q4_k

printf '%-22s %9s %11s %11s %8s %10s %9s %8s\n' format "file GB" "resident GB" "peak RSS GB" "peak/file" "prefill ms" "decode t/s" "wall s"
printf '%s\n' "${rows[@]}"
echo "$json]}"
