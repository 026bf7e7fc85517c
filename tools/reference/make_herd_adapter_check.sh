#!/usr/bin/env bash
# An adapter trained by herd, and what PEFT computes with it: herd finetune on
# fixtures/lora-tiny/train.jsonl (every module kind, the router and both fused expert tensors),
# then PeftModel.from_pretrained(base, herd's adapter) — unchanged — gives the logits the Rust
# test `an_adapter_trained_by_herd_gives_pefts_logits_in_herd` compares against.
#
#   HERD=target/debug/herd PYTHON=/work/refenv/bin/python tools/reference/make_herd_adapter_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HERD=${HERD:-target/debug/herd}
PYTHON=${PYTHON:-python3}
OUT=fixtures/lora-tiny/herd-adapter
rm -rf "$OUT"
"$HERD" -t 1 finetune --model fixtures/lora-tiny --data fixtures/lora-tiny/train.jsonl --out "$OUT" \
  --max-len 64 --batch-size 2 --lora-rank 4 --lora-alpha 8 --lr 5e-3 --steps 8 --warmup-steps 1 --seed 3 \
  --target-modules all-linear,router \
  --target-parameters feed_forward.experts.gate_up_proj,feed_forward.experts.down_proj --quiet
# Keep only what PEFT reads (the run's state and curves are not part of the fixture).
find "$OUT" -mindepth 1 ! -name adapter_config.json ! -name adapter_model.safetensors -exec rm -rf {} +
# A fixed-path base name, so the fixture does not depend on where it was made.
"$PYTHON" - "$OUT" <<'PY'
import json, sys, torch, safetensors.torch as st
from transformers import Llama4ForCausalLM
from peft import PeftModel
torch.set_num_threads(1)
out = sys.argv[1]
g = torch.Generator().manual_seed(11)
ids = torch.randint(0, 505, (2, 20), generator=g)
base = Llama4ForCausalLM.from_pretrained("fixtures/lora-tiny", dtype=torch.float32, attn_implementation="eager")
model = PeftModel.from_pretrained(base, out).eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
st.save_file({"ids": ids.contiguous(), "logits": logits.contiguous()}, f"{out}/peft_logits.safetensors")
print("PEFT logits for herd's adapter:", tuple(logits.shape))
PY
