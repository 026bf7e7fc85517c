#!/usr/bin/env python3
"""The transformers + PEFT side of bench/finetune_compare.sh (and its data and LoRA init).

    finetune_peft.py data  --model DIR --out FILE.jsonl [--examples 64] [--seq 256]
    finetune_peft.py init  --model DIR --out ADAPTER_DIR [--rank 16] [--alpha 32] [--seed 0]
    finetune_peft.py train --model DIR --data FILE.jsonl --mode lora|full --steps N --seq SEQ
                           [--threads 2] [--dtype float32|bfloat16] [--init-adapter DIR]
                           [--herd-csv OUT/loss.csv] [--json FILE] [--wall-s S]
    finetune_peft.py herd  --csv OUT/loss.csv --mode lora|full --json FILE [--dtype ..] [--wall-s S]
    finetune_peft.py report --results DIR RUN...   (RUN: MODEL:MODE:DTYPE, files DIR/{herd,hf}-RUN.json)

`data` writes deterministic single-turn chats (system, user, assistant) whose rendering through
the model's chat template is between SEQ/2 and SEQ tokens, every example a different length, so
no two pack into one sequence and each of herd's steps (the `tokens` and `trained_tokens`
columns of its loss.csv) names the one example it trained on.

`init` writes a PEFT LoRA adapter at PEFT's initialisation (A: kaiming-uniform, a = √5; B: 0)
for q/k/v/o of every layer, from config.json alone (no weights loaded). Both tools start from it
(herd through --init-adapter), so their LoRA runs begin from the same weights.

`train` renders each chat as herd does (the template's rendering of the messages before the
reply with the generation prompt, then the rest — the reply and its <|eot|> — tokenized as its
own span; loss on the reply's tokens only), then trains one sequence per step: forward,
backward, torch's clip_grad_norm_(1.0), AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, no weight
decay) on herd's schedule (cosine from the peak to 0 over the steps, no warmup). With
--herd-csv it trains on the examples in herd's order (matched by token counts), else in file
order. It prints one line per step and, with --json, writes the figures: tokens/s over the
steps after the first (sum of tokens ÷ sum of seconds), per-step losses, final loss.

`herd` reads herd's loss.csv into the same figures; `report` prints the side-by-side table, the
ratios herd ÷ transformers, how closely the loss curves agree, and one JSON line.
"""

import argparse
import csv
import json
import math
import os
import random
import sys
import time

WORDS = (
    "the river carried small boats past old mills while children counted birds on a grey "
    "morning and the baker opened his shop early because the market would be busy with "
    "farmers selling apples pears honey cheese bread wool candles and copper pots near the "
    "bridge where a painter watched light move across water stone glass and distant hills "
    "before rain arrived from the west bringing cold wind that rattled shutters doors signs "
    "lanterns and the bell of a quiet chapel on the square"
).split()
QUESTIONS = [
    "Describe the market by the river.",
    "What happened on the grey morning?",
    "Tell me about the painter near the bridge.",
    "Summarise the day in the town.",
    "What did the farmers sell?",
    "Why was the baker up early?",
    "How did the weather change?",
    "Write a short scene about the chapel square.",
]
SYSTEM = "You are a helpful assistant who writes plain descriptive prose."


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_tokenizer(model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def render(tok, messages):
    """(ids, number of leading untrained ids) as herd renders a chat with one assistant turn."""
    prefix = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prefix):
        raise SystemExit("the chat template's generation prompt is not a prefix of the rendering")
    p = tok(prefix, add_special_tokens=False)["input_ids"]
    r = tok(full[len(prefix):], add_special_tokens=False)["input_ids"]
    return p + r, len(p)


def cmd_data(a):
    tok = load_tokenizer(a.model)
    if not getattr(tok, "chat_template", None):
        raise SystemExit(f"{a.model}: the tokenizer has no chat template")
    rng = random.Random(a.seed)
    lo, hi = a.seq // 2 + 1, a.seq  # a sequence of more than SEQ/2 tokens packs with no other
    if hi - lo + 1 < a.examples:
        raise SystemExit(f"--seq {a.seq} leaves too few distinct lengths for {a.examples} examples")
    used = set()
    lines = []
    for i in range(a.examples):
        target = hi - 2 - (i * (hi - lo - 8)) // max(a.examples, 1)
        user = rng.choice(QUESTIONS)
        words = []
        while True:
            words.append(rng.choice(WORDS))
            msgs = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user},
                {"role": "assistant", "content": " ".join(words).capitalize() + "."},
            ]
            n = len(render(tok, msgs)[0])
            if n >= target:
                break
        # Step to an unused length in range: drop words if too long, add if taken.
        tries = 0
        while (n in used or n > hi or n < lo) and tries < 200:
            tries += 1
            if n > hi or (n in used and rng.random() < 0.5 and n > lo + 4):
                words.pop()
            else:
                words.append(rng.choice(WORDS[:8]))
            msgs[2]["content"] = " ".join(words).capitalize() + "."
            n = len(render(tok, msgs)[0])
        if n in used or not lo <= n <= hi:
            raise SystemExit(f"example {i}: no unused length in {lo}..{hi}")
        used.add(n)
        lines.append(json.dumps({"messages": msgs}))
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"{a.out}: {len(lines)} chats of {min(used)}..{max(used)} tokens")


def cmd_init(a):
    import torch
    from safetensors.torch import save_file

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    cfg = cfg.get("text_config", cfg)
    d = cfg["hidden_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    g = torch.Generator().manual_seed(a.seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            # PEFT: nn.init.kaiming_uniform_(lora_A, a=sqrt(5)) → U(±1/sqrt(fan_in)); B = 0.
            bound = 1.0 / math.sqrt(fan_in)
            tensors[f"{key}.lora_A.weight"] = (torch.rand(a.rank, fan_in, generator=g) * 2 - 1) * bound
            tensors[f"{key}.lora_B.weight"] = torch.zeros(fan_out, a.rank)
    os.makedirs(a.out, exist_ok=True)
    save_file(tensors, os.path.join(a.out, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": None, "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "lora_alpha": a.alpha,
        "lora_dropout": 0.0, "modules_to_save": None, "peft_type": "LORA", "r": a.rank,
        "rank_pattern": {}, "revision": None, "target_modules": list(shapes),
        "target_parameters": None, "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }
    with open(os.path.join(a.out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    log(f"{a.out}: LoRA r{a.rank} alpha {a.alpha} on q/k/v/o of {cfg['num_hidden_layers']} layers")


def herd_order(path, samples):
    """Example index per step of herd's loss.csv, by (tokens, trained_tokens)."""
    by_counts = {}
    for i, (ids, n_prefix) in enumerate(samples):
        by_counts.setdefault((len(ids), len(ids) - n_prefix), []).append(i)
    order = []
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (int(row["tokens"]), int(row["trained_tokens"]))
            if key not in by_counts or len(by_counts[key]) != 1:
                raise SystemExit(
                    f"herd's step {row['step']} trained {key[0]} tokens ({key[1]} trained): no single "
                    "example renders to that here — the two tokenizations differ"
                )
            order.append(by_counts[key][0])
    return order


def cmd_train(a):
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    tok = load_tokenizer(a.model)
    records = [json.loads(line) for line in open(a.data) if line.strip()]
    samples = [render(tok, r["messages"]) for r in records]
    for ids, _ in samples:
        if len(ids) > a.seq:
            raise SystemExit(f"an example renders to {len(ids)} > --seq {a.seq} tokens")
    if a.herd_csv:
        order = herd_order(a.herd_csv, samples)
        if len(order) < a.steps:
            raise SystemExit(f"{a.herd_csv} has {len(order)} steps, fewer than --steps {a.steps}")
        order = order[: a.steps]
    else:
        order = [k % len(samples) for k in range(a.steps)]

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager")
    model.config.use_cache = False
    if a.mode == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if a.init_adapter:
            model = PeftModel.from_pretrained(model, a.init_adapter, is_trainable=True)
        else:
            cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none",
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
            model = get_peft_model(model, cfg)
        if dtype != torch.float32:  # trainable adapters in f32, as herd's
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.data = p.data.float()
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    load_s = time.perf_counter() - t
    log(f"transformers {a.mode} {a.dtype}: loaded in {load_s:.1f} s, {n_trainable} trainable values "
        f"in {len(params)} tensors, {torch.get_num_threads()} threads")

    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    # herd: lr × ½(1 + cos(π step / total)) for update `step` (0-based), no warmup.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / a.steps)))
    steps = []
    for k, i in enumerate(order):
        ids, n_prefix = samples[i]
        input_ids = torch.tensor([ids])
        labels = input_ids.clone()
        labels[0, :n_prefix] = -100
        started = time.perf_counter()
        out = model(input_ids=input_ids, labels=labels)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        loss = out.loss.item()
        steps.append({"step": k + 1, "example": i, "tokens": len(ids), "trained_tokens": len(ids) - n_prefix,
                      "loss": loss, "grad_norm": float(norm), "seconds": seconds})
        log(f"step {k + 1}/{a.steps} · loss {loss:.4f} · {len(ids) / seconds:.1f} tok/s")
    timed = steps[1:] if len(steps) > 1 else steps
    result = {
        "tool": "transformers+peft" if a.mode == "lora" else "transformers",
        "mode": a.mode, "dtype": a.dtype, "threads": a.threads, "steps": len(steps),
        "tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed),
        "final_loss": steps[-1]["loss"], "load_s": load_s, "trainable": n_trainable,
        "order": "herd" if a.herd_csv else "file", "per_step": steps,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__ if a.mode == "lora" else None},
    }
    write_result(result, a)


def write_result(result, a):
    if a.wall_s is not None:
        result["wall_s"] = a.wall_s
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "per_step"}))


def cmd_herd(a):
    with open(a.csv) as f:
        rows = list(csv.DictReader(f))
    steps = [{"step": int(r["step"]), "tokens": int(r["tokens"]), "trained_tokens": int(r["trained_tokens"]),
              "loss": float(r["train_loss"]), "grad_norm": float(r["grad_norm"]), "seconds": float(r["seconds"])}
             for r in rows]
    if not steps:
        raise SystemExit(f"{a.csv}: no steps")
    timed = steps[1:] if len(steps) > 1 else steps
    write_result({
        "tool": "herd", "mode": a.mode, "dtype": a.dtype, "threads": a.threads, "steps": len(steps),
        "tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed),
        "final_loss": steps[-1]["loss"], "per_step": steps,
    }, a)


def cmd_report(a):
    rows, out = [], []
    for run in a.runs:
        model, mode, dtype = run.split(":")
        herd = json.load(open(os.path.join(a.results, f"herd-{run.replace(':', '-')}.json")))
        hf = json.load(open(os.path.join(a.results, f"hf-{run.replace(':', '-')}.json")))
        hs, ts = herd["per_step"], hf["per_step"]
        same_tokens = [s["tokens"] for s in hs] == [s["tokens"] for s in ts]
        dloss = [abs(x["loss"] - y["loss"]) for x, y in zip(hs, ts)]
        for r in (herd, hf):
            rows.append((model, mode, dtype, r["tool"], r["tokens_per_s"], r["final_loss"],
                         sum(s["loss"] for s in r["per_step"]) / len(r["per_step"]), r.get("wall_s")))
        ratio = herd["tokens_per_s"] / hf["tokens_per_s"]
        rows.append((model, mode, dtype, "herd ÷ transformers", ratio, None, None, None))
        out.append({
            "model": model, "mode": mode, "dtype": dtype, "steps": len(hs), "same_tokens": same_tokens,
            "herd_tok_s": herd["tokens_per_s"], "transformers_tok_s": hf["tokens_per_s"], "ratio": ratio,
            "herd_final_loss": herd["final_loss"], "transformers_final_loss": hf["final_loss"],
            "herd_losses": [s["loss"] for s in hs], "transformers_losses": [s["loss"] for s in ts],
            "max_abs_loss_diff": max(dloss) if dloss else None,
            "herd_wall_s": herd.get("wall_s"), "transformers_wall_s": hf.get("wall_s"),
            "transformers_load_s": hf.get("load_s"), "trainable": hf.get("trainable"),
            "versions": hf.get("versions"),
        })
    fmt = lambda v, p: "—" if v is None else f"{v:.{p}f}"
    print(f"| {'model':<22} | {'mode':<4} | {'dtype':<8} | {'tool':<19} | {'tokens/s':>9} | "
          f"{'final loss':>10} | {'mean loss':>9} | {'run s':>6} |")
    print(f"|{'-' * 24}|{'-' * 6}|{'-' * 10}|{'-' * 21}|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 8}|")
    for model, mode, dtype, tool, tps, final, mean, wall in rows:
        tps_s = f"{tps:.2f}×" if tool.startswith("herd ÷") else fmt(tps, 1)
        print(f"| {model:<22} | {mode:<4} | {dtype:<8} | {tool:<19} | {tps_s:>9} | {fmt(final, 4):>10} | "
              f"{fmt(mean, 4):>9} | {fmt(wall, 0):>6} |")
    print()
    for o in out:
        print(f"{o['model']} {o['mode']} {o['dtype']}: same tokens each step: {o['same_tokens']}; "
              f"per-step |loss herd − loss transformers| ≤ {o['max_abs_loss_diff']:.2e} over {o['steps']} steps")
    print(json.dumps({"threads": a.threads, "results": out}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--model", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--examples", type=int, default=64)
    d.add_argument("--seq", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("init")
    i.add_argument("--model", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--rank", type=int, default=16)
    i.add_argument("--alpha", type=float, default=32)
    i.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--mode", choices=["lora", "full"], required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--seq", type=int, required=True)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--alpha", type=float, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--init-adapter")
    t.add_argument("--herd-csv")
    t.add_argument("--json")
    t.add_argument("--wall-s", type=float)
    h = sub.add_parser("herd")
    h.add_argument("--csv", required=True)
    h.add_argument("--mode", choices=["lora", "full"], required=True)
    h.add_argument("--dtype", default="float32")
    h.add_argument("--threads", type=int, default=2)
    h.add_argument("--json")
    h.add_argument("--wall-s", type=float)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("runs", nargs="+")
    a = p.parse_args()
    {"data": cmd_data, "init": cmd_init, "train": cmd_train, "herd": cmd_herd, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
