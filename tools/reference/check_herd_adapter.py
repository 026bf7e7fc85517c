#!/usr/bin/env python3
"""Check that a LoRA adapter written by herd loads in PEFT, unchanged, and computes what herd
computed.

    /work/refenv/bin/python tools/reference/check_herd_adapter.py \\
        --model fixtures/lora-tiny --adapter /tmp/herd-adapter --logits /tmp/herd-logits.safetensors

* --model: a transformers checkpoint folder (config.json + safetensors). model_type `llama4_text`
  loads as Llama4ForCausalLM; `llama4` loads as Llama4ForConditionalGeneration and the logits come
  from its `language_model` (the multimodal forward is broken in transformers 5.24; the LoRA layers
  PEFT injected are inside it either way).
* --adapter: adapter_config.json + adapter_model.safetensors, loaded with
  `PeftModel.from_pretrained(base, DIR)` and nothing else: no key renaming, no config edits.
* --logits: a safetensors file holding `ids` int64 [B, T] and `logits` f32 [B, T, V], what herd
  computed for those ids with the adapter applied (full pass, no padding, no cache).

Prints the adapter's key check, then max |PEFT - herd| over all logits (and per row, with argmax
agreement). Exit status 1 if a key in the file is not a LoRA parameter PEFT created, a LoRA
parameter PEFT created has no key in the file (PEFT would leave it at its initial value), a loaded
value differs from the file, or the max difference exceeds --tol (default 1e-4). float32, eager
attention, one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)

import safetensors.torch  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import Llama4ForCausalLM, Llama4ForConditionalGeneration  # noqa: E402

transformers.logging.set_verbosity_error()


def load_base(path: Path):
    model_type = json.loads((path / "config.json").read_text())["model_type"]
    cls = {"llama4_text": Llama4ForCausalLM, "llama4": Llama4ForConditionalGeneration}.get(model_type)
    if cls is None:
        sys.exit(f"{path}/config.json: model_type {model_type!r} is not llama4_text or llama4")
    model, info = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"{path}: base checkpoint loading info {bad}")
    with torch.no_grad():  # aligned memory (tools/reference/README.md pitfall 5)
        for p in model.parameters():
            p.data = p.data.clone()
    return model.eval(), cls


def check_keys(pm: PeftModel, adapter: Path) -> bool:
    """Every tensor of the file is a LoRA parameter of the model and vice versa, with equal values."""
    name = pm.active_adapter
    params = {}
    for n, p in pm.named_parameters():
        if f".{name}." in n and "lora_" in n:
            params[n.replace(f".{name}.", ".")] = p
    file = safetensors.torch.load_file(adapter / "adapter_model.safetensors")
    missing = sorted(set(params) - set(file))
    unexpected = sorted(set(file) - set(params))
    ok = True
    if missing:
        ok = False
        print(f"FAIL: {len(missing)} LoRA parameters PEFT created have no key in the file, e.g. {missing[:4]}")
    if unexpected:
        ok = False
        print(f"FAIL: {len(unexpected)} keys in the file match no LoRA parameter, e.g. {unexpected[:4]}")
    differ = [k for k in sorted(set(params) & set(file)) if not torch.equal(params[k].detach(), file[k].to(params[k].dtype))]
    if differ:
        ok = False
        print(f"FAIL: {len(differ)} loaded tensors differ from the file, e.g. {differ[:4]}")
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in file.values()})
    print(f"adapter: {len(file)} tensors ({', '.join(dtypes)}), {len(params)} LoRA parameters in the model"
          + ("; keys and values match" if ok else ""))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--logits", type=Path, required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    cfg = json.loads((args.adapter / "adapter_config.json").read_text())
    print("adapter_config: " + ", ".join(
        f"{k}={cfg.get(k)!r}" for k in ("peft_type", "task_type", "r", "lora_alpha", "use_rslora", "lora_dropout",
                                        "target_modules", "target_parameters", "base_model_name_or_path")))
    base, cls = load_base(args.model)
    pm = PeftModel.from_pretrained(base, str(args.adapter))
    pm.eval()
    keys_ok = check_keys(pm, args.adapter)

    ref = safetensors.torch.load_file(args.logits)
    if set(ref) < {"ids", "logits"}:
        sys.exit(f"{args.logits}: needs tensors `ids` and `logits`, has {sorted(ref)}")
    ids, herd = ref["ids"], ref["logits"]
    if ids.dtype != torch.int64 or ids.ndim != 2 or herd.ndim != 3 or herd.shape[:2] != ids.shape:
        sys.exit(f"{args.logits}: ids {ids.dtype} {list(ids.shape)}, logits {herd.dtype} {list(herd.shape)}; "
                 "expected int64 [B, T] and f32 [B, T, V]")
    lm = pm.base_model.model
    if cls is Llama4ForConditionalGeneration:
        lm = lm.language_model
    with torch.no_grad():
        logits = lm(input_ids=ids).logits.float()
    if logits.shape != herd.shape:
        sys.exit(f"shape: PEFT logits {list(logits.shape)}, herd logits {list(herd.shape)}")
    diff = (logits - herd.float()).abs()
    worst = float(diff.max())
    for b in range(ids.shape[0]):
        same = int((logits[b].argmax(-1) == herd[b].argmax(-1)).sum())
        print(f"row {b}: max|PEFT - herd| {float(diff[b].max()):.3e}, argmax equal at {same}/{ids.shape[1]}")
    print(f"max|PEFT - herd| = {worst:.3e} (tol {args.tol:g})")
    ok = keys_ok and worst <= args.tol
    print("OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
