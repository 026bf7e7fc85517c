#!/usr/bin/env bash
# herd finetune vs transformers + PEFT: training throughput on the same model folder, the same
# token ids in the same order, the same threads, in the same run:
#
#   bench/finetune_compare.sh           # ~10 min on 2 cores with the full bench model (after the build)
#   LAYERS=4 bench/finetune_compare.sh  # a 4-layer bench model: a few minutes
#
# On a machine where others build or benchmark, run it under their lock, e.g.
# `flock /tmp/cargo.lock bench/finetune_compare.sh`, so nothing else competes for the cores.
#
# 1. builds herd (cargo build --release -p herd-cli), unless HERD names a binary;
# 2. makes the bench model with `herd synth --preset bench-moe-2.7b` (Scout's structure scaled
#    down: 16 layers, 16 routed experts top-1 + a shared expert, random bf16 weights, 5.5 GB; its
#    byte-level tokenizer ships no chat template, so transformers' Llama 4 template — the one in
#    fixtures/lora-tiny — is written beside it as chat_template.jinja, which both tools read);
#    the full fine-tuning model is fixtures/lora-tiny (4 layers, hidden 64, f32);
# 3. writes, per model, a deterministic JSONL of $EXAMPLES single-turn chats (system, user,
#    assistant; loss on the assistant reply and its <|eot|> only, as herd trains chats), each
#    rendering to a different length between SEQ/2 and SEQ tokens: one chat per sequence, and
#    herd's loss.csv says which chat each step trained on (checked: a step whose token counts
#    match no chat stops the script);
# 4. LoRA r16 (alpha 32) on q/k/v/o of the bench model: both tools start from the same PEFT
#    adapter (PEFT's initialisation, B = 0; herd via --init-adapter), batch 1, AdamW lr 2e-4,
#    no weight decay, gradient clipping at 1, cosine decay over $STEPS steps, f32 compute
#    (transformers loads the bf16 weights as f32; herd keeps them as loaded and computes in f32);
#    then full fine-tuning (every weight) of lora-tiny for $TINY_STEPS steps;
#    herd: `herd -t $THREADS finetune ... --quiet`; transformers: bench/finetune_peft.py train
#    (eager attention, torch.set_num_threads($THREADS)), on the examples in herd's order;
# 5. tokens/s = Σ tokens ÷ Σ step seconds over the steps after the first (warm-up), each step a
#    forward, backward, clip and optimizer update; prints both with the ratio herd ÷ transformers,
#    the final and mean losses and the largest per-step loss difference, then one JSON line.
#
# Environment: THREADS (2), SEQ (256: tokens per sequence, --max-len), STEPS (10: LoRA steps on the
# bench model), TINY_STEPS (30), EXAMPLES (64), LAYERS (bench model layers; default the preset's
# 16), BF16 (1, the default, adds a bf16 LoRA run of both tools: herd --dtype bf16, transformers
# loading the weights as bf16 with the adapters kept in f32; 0 skips it), WORK (models, data, results; ~6 GB; default
# /tmp/herd-finetune-compare), HERD (a built herd binary), PYTHON (with torch, transformers and
# peft; default /work/refenv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

THREADS=${THREADS:-2}
SEQ=${SEQ:-256}
STEPS=${STEPS:-10}
TINY_STEPS=${TINY_STEPS:-30}
EXAMPLES=${EXAMPLES:-64}
LAYERS=${LAYERS:-}
BF16=${BF16:-1}
WORK=${WORK:-/tmp/herd-finetune-compare}
PYTHON=${PYTHON:-/work/refenv/bin/python}
HELPER=$ROOT/bench/finetune_peft.py
TINY=$ROOT/fixtures/lora-tiny
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RESULTS=$WORK/results
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false
log() { printf '\n== %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)

"$PYTHON" -c 'import torch, transformers, peft' || {
    echo "$PYTHON lacks torch, transformers or peft (set PYTHON)" >&2
    exit 1
}

# --- herd -------------------------------------------------------------------------------
if [ -z "${HERD:-}" ]; then
    log "building herd (release)"
    cargo build --release -p herd-cli
    HERD=$ROOT/target/release/herd
fi

# --- models -----------------------------------------------------------------------------
BENCH_NAME=bench-moe-2.7b${LAYERS:+-L$LAYERS}
BENCH=$WORK/$BENCH_NAME
if [ ! -f "$BENCH/.complete" ]; then
    log "herd synth --preset bench-moe-2.7b ${LAYERS:+--layers $LAYERS} → $BENCH"
    rm -rf "$BENCH"
    "$HERD" -t "$THREADS" synth --preset bench-moe-2.7b ${LAYERS:+--layers "$LAYERS"} --out "$BENCH" --quiet
    touch "$BENCH/.complete"
fi
if [ ! -f "$BENCH/chat_template.jinja" ]; then
    "$PYTHON" -c 'import json, sys
open(sys.argv[2], "w").write(json.load(open(sys.argv[1]))["chat_template"])' \
        "$TINY/tokenizer_config.json" "$BENCH/chat_template.jinja"
fi

# --- data and the LoRA starting point -----------------------------------------------------
log "training data ($EXAMPLES chats of SEQ/2..$SEQ tokens per model) and the initial adapter"
"$PYTHON" "$HELPER" data --model "$BENCH" --out "$WORK/data-bench.jsonl" --examples "$EXAMPLES" --seq "$SEQ"
"$PYTHON" "$HELPER" data --model "$TINY" --out "$WORK/data-tiny.jsonl" --examples "$EXAMPLES" --seq "$SEQ"
rm -rf "$WORK/init-adapter"
"$PYTHON" "$HELPER" init --model "$BENCH" --out "$WORK/init-adapter" --rank 16 --alpha 32

# --- runs -------------------------------------------------------------------------------
# run NAME MODEL DATA MODE DTYPE STEPS: herd, then transformers on herd's order.
run() {
    local name=$1 model=$2 data=$3 mode=$4 dtype=$5 steps=$6
    local out=$WORK/herd-$name herd_args=() hf_args=()
    if [ "$mode" = lora ]; then
        herd_args=(--lora-rank 16 --target-modules q_proj,k_proj,v_proj,o_proj --init-adapter "$WORK/init-adapter")
        hf_args=(--init-adapter "$WORK/init-adapter")
    else
        herd_args=(--full)
    fi
    [ "$dtype" = bfloat16 ] && herd_args+=(--dtype bf16)
    rm -rf "$out"
    log "herd: $name ($steps steps)"
    local t
    t=$(now)
    "$HERD" -t "$THREADS" finetune --model "$model" --data "$data" --out "$out" --max-len "$SEQ" \
        --batch-size 1 --steps "$steps" --no-packing "${herd_args[@]}" --quiet 2>&1 | tee "$RESULTS/herd-$name.log" >&2
    "$PYTHON" "$HELPER" herd --csv "$out/loss.csv" --mode "$mode" --dtype "$dtype" --threads "$THREADS" \
        --wall-s "$(since "$t")" --json "$RESULTS/herd-$name.json" >/dev/null
    log "transformers + PEFT: $name ($steps steps)"
    t=$(now)
    "$PYTHON" "$HELPER" train --model "$model" --data "$data" --mode "$mode" --dtype "$dtype" --steps "$steps" \
        --seq "$SEQ" --threads "$THREADS" --herd-csv "$out/loss.csv" "${hf_args[@]}" \
        --json "$RESULTS/hf-$name.tmp.json" 2>&1 | tee "$RESULTS/hf-$name.log" >&2
    "$PYTHON" -c 'import json, sys
r = json.load(open(sys.argv[1])); r["wall_s"] = float(sys.argv[3]); json.dump(r, open(sys.argv[2], "w"))' \
        "$RESULTS/hf-$name.tmp.json" "$RESULTS/hf-$name.json" "$(since "$t")"
}

runs=()
run "$BENCH_NAME-lora-float32" "$BENCH" "$WORK/data-bench.jsonl" lora float32 "$STEPS"
runs+=("$BENCH_NAME:lora:float32")
if [ "$BF16" = 1 ]; then
    run "$BENCH_NAME-lora-bfloat16" "$BENCH" "$WORK/data-bench.jsonl" lora bfloat16 "$STEPS"
    runs+=("$BENCH_NAME:lora:bfloat16")
fi
run "lora-tiny-full-float32" "$TINY" "$WORK/data-tiny.jsonl" full float32 "$TINY_STEPS"
runs+=("lora-tiny:full:float32")

# --- report -----------------------------------------------------------------------------
log "results (THREADS=$THREADS, SEQ=$SEQ, batch 1, $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
"$PYTHON" "$HELPER" report --results "$RESULTS" --threads "$THREADS" "${runs[@]}"
cat <<EOF

Notes on fairness:
- transformers' Llama4TextExperts runs every routed expert on every token (one dense bmm over
  all $("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_local_experts"])' "$BENCH/config.json") experts, inputs scaled by the router's scores, zero for the unchosen), so on the MoE
  layers it does (experts) × the routed-expert work of top-1 routing; herd computes only the
  chosen expert. That is how transformers implements Llama 4, not a setting of this script.
- Same token ids, same example per step, same LoRA starting weights, same optimizer, schedule
  and clipping: the per-step losses differ only by floating-point order (and any router tie it
  flips). lora-tiny is tiny (hidden 64, 4 layers): its tokens/s measures per-operation overhead
  more than arithmetic.
- f32 runs: transformers holds the bench model's bf16 weights as f32 copies (about 2× the
  memory). bf16 runs: transformers computes in bf16 with bf16 weights (adapters in f32), herd
  with --dtype bf16; their losses differ by bf16 rounding, not by what is trained.
- Step times exclude loading, tokenization and data preparation in both tools. herd's loss.csv
  gives seconds to the millisecond, so each ~30 ms lora-tiny step carries up to ~2% rounding.
EOF
echo "wall time: $(since "$started") s"
