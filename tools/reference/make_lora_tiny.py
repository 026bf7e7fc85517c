#!/usr/bin/env python3
"""Build fixtures/lora-tiny/: a tiny Llama 4 text checkpoint with interleaved dense and MoE layers,
a PEFT LoRA adapter for it (saved by PEFT itself, untouched), and what transformers + PEFT compute
with them: logits, the causal-LM loss, the gradient of that loss w.r.t. every LoRA tensor, a 10-step
AdamW + cosine-schedule trajectory (HF Trainer order), and full-fine-tuning gradients of a few base
weights. herd-train's tests compare against these with no Python.

Run from anywhere (it works in the repository root):

    /work/refenv/bin/python tools/reference/make_lora_tiny.py

~20 s on one thread. Deletes and rewrites fixtures/lora-tiny/ only. Two runs give byte-identical
files (the script re-executes itself with PYTHONHASHSEED=0: PEFT writes `target_modules` of
adapter_config.json in Python set order). See tools/reference/README.md, section "lora-tiny",
for the adapter format facts checked here.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    # adapter_config.json's target_modules is list(set(...)): its order follows string hashing.
    os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, PYTHONHASHSEED="0"))

import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import accelerate  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora.layer import ParamWrapper  # noqa: E402
from transformers import Llama4ForCausalLM, Llama4TextConfig, get_cosine_schedule_with_warmup  # noqa: E402
from transformers.models.llama4.modeling_llama4 import Llama4Router  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (pins 1 thread + deterministic algorithms, silences transformers)

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)  # is_gradient_checkpointing deprecation (PEFT)
warnings.filterwarnings("ignore", message=".*Casting complex values.*")

GENERATOR = "tools/reference/make_lora_tiny.py"
ROOT = mf.ROOT
REL_OUT = "fixtures/lora-tiny"  # relative, so adapter_config.json's base_model_name_or_path is portable
OUT = ROOT / REL_OUT
ADAPTER_DIR = OUT / "peft-adapter"
CHAT = ROOT / "fixtures" / "chat-tiny"
MAX_TOTAL_BYTES = 1_900_000
ADAPTER = "default"  # PEFT's adapter name; it appears in parameter names but not in the saved keys

MIN_ROUTER_GAP = mf.MIN_ROUTER_GAP  # 5e-4 between the chosen and the next router logit, every token
SEED_TRIES = 200
BATCH_SEED = 7001
ADAPTER_SEED = 7002

# The batch: [2, 24] ids, labels = ids with the first MASKED[b] positions of row b set to -100.
BATCH, SEQ = 2, 24
MASKED = [8, 5]

LORA = dict(
    task_type="CAUSAL_LM",
    r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    init_lora_weights=False,  # lora_B non-zero (nn.Linear's kaiming-uniform init for A and B)
    # "router" is NOT in target_modules: PEFT wraps Llama4Router (an nn.Linear subclass) in
    # lora.Linear, whose forward adds to the router's *tuple* output and fails (see README).
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # The router weight is adapted through target_parameters instead (same saved key names as a
    # lora.Linear would have: ...feed_forward.router.lora_{A,B}.weight).
    target_parameters=[
        "feed_forward.experts.gate_up_proj",
        "feed_forward.experts.down_proj",
        "feed_forward.router.weight",
    ],
)
ASKED_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "router"]
ASKED_TARGET_PARAMETERS = ["feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj"]

OPT = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
WARMUP, STEPS, MAX_GRAD_NORM = 2, 10, 1.0

FULL_GRAD_PARAMS = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.feed_forward.router.weight",
    "model.layers.1.feed_forward.experts.gate_up_proj",
    "model.layers.1.feed_forward.experts.down_proj",
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.norm.weight",
]

VERSIONS = dict(
    mf.VERSIONS,
    peft=peft.__version__,
    accelerate=accelerate.__version__,
    python=sys.version.split()[0],
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Config, weights, batch


def text_config() -> dict:
    """chat-tiny's config.json with dense/MoE interleaving (dense 0,2; MoE 1,3) and a distinct
    expert width: intermediate_size 24, so D=64, F=24, 2F=48 and the dense F_mlp=96 all differ and
    every LoRA shape tells which weight it belongs to (with chat-tiny's F=32, 2F = D = 64 and the
    gate_up / down LoRA tensors would have the same shapes)."""
    cfg = json.loads((CHAT / "config.json").read_text())
    for k in ("architectures", "transformers_version", "dtype"):
        cfg.pop(k)
    assert cfg["model_type"] == "llama4_text"
    cfg.pop("model_type")
    cfg.update(
        interleave_moe_layer_step=2,
        moe_layers=[1, 3],
        num_local_experts=4,
        num_experts_per_tok=1,
        intermediate_size=24,
        attention_chunk_size=8,
        initializer_range=0.1,
    )
    assert cfg["layer_types"] == ["chunked_attention"] * 3 + ["full_attention"]
    assert cfg["no_rope_layers"] == [1, 1, 1, 0]  # layer 3: global NoPE (and MoE)
    assert cfg["attention_dropout"] == 0.0
    return cfg


def make_config(text: dict) -> Llama4TextConfig:
    cfg = Llama4TextConfig(**text)
    cfg._attn_implementation = "eager"
    return cfg


@torch.no_grad()
def build_base(text: dict, seed: int) -> Llama4ForCausalLM:
    """Weights drawn as in make_fixtures.init_weights: matrices N(0, 0.15²), routers N(0, 0.3²),
    norm gains 1 + N(0, 0.1²). No lm_head rows are suppressed (nothing is decoded)."""
    torch.manual_seed(seed)
    model = Llama4ForCausalLM(make_config(text))
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.ndim == 1 and "norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("router.weight"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_batch(vocab: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    allowed = torch.tensor([i for i in range(vocab) if i != pad], dtype=torch.int64)
    g = torch.Generator().manual_seed(BATCH_SEED)
    ids = allowed[torch.randint(len(allowed), (BATCH, SEQ), generator=g)]
    labels = ids.clone()
    for b, n in enumerate(MASKED):
        labels[b, :n] = -100
    return ids, labels


def reload_base(path: str) -> Llama4ForCausalLM:
    """from_pretrained with a path relative to the repository root (the cwd), then parameters
    cloned into aligned memory (README pitfall 5)."""
    model, info = Llama4ForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, f"loading info {bad}"
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model.eval()


def lora_config(**over) -> LoraConfig:
    kw = copy.deepcopy(LORA)
    kw.update(over)
    return LoraConfig(**kw)


# --------------------------------------------------------------------------------------------
# Loss, router taps, trajectory


def manual_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' ForCausalLMLoss without num_items_in_batch: logits[:, t] predicts
    labels[:, t+1]; mean cross-entropy over targets != -100."""
    tgt = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)


class RouterTap:
    """Forward hooks on every Llama4Router (also when PEFT has wrapped it): the top-1 minus top-2
    router logit per token, over all MoE layers."""

    def __init__(self, model):
        self.gaps = []
        self.experts = []
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules() if isinstance(m, Llama4Router)]
        assert len(self.handles) == 2

    def hook(self, module, inputs, output):
        logits = output[1].detach()
        top = logits.topk(2, dim=-1)
        self.gaps.append(float((top.values[:, 0] - top.values[:, 1]).min()))
        self.experts.append(top.indices[:, 0].clone())

    def close(self):
        for h in self.handles:
            h.remove()


def forward_logits(model, ids) -> tuple[torch.Tensor, float, list]:
    tap = RouterTap(model)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits.detach().clone()
    finally:
        tap.close()
    return logits, min(tap.gaps), tap.experts


def lora_params(pm) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters by the key PEFT writes to adapter_model.safetensors."""
    out = {}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            assert f".{ADAPTER}." in name and "lora_" in name, name
            out[name.replace(f".{ADAPTER}.", ".")] = p
    return out


def run_trajectory(pm, ids, labels) -> dict:
    """10 steps of HF Trainer's inner loop on the LoRA parameters only, the same batch every step:
    loss.backward(); clip_grad_norm_(params, 1.0); optimizer.step(); scheduler.step(); zero_grad."""
    params = lora_params(pm)
    plist = list(params.values())
    opt = torch.optim.AdamW(plist, **OPT)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    out = {"loss": [], "grad_norm": [], "lr": [], "router_gap": [], "first_grads": None}
    pm.train()
    for step in range(STEPS):
        tap = RouterTap(pm)
        try:
            loss = pm(input_ids=ids, labels=labels).loss
        finally:
            tap.close()
        loss.backward()
        if step == 0:
            out["first_grads"] = {k: p.grad.detach().clone() for k, p in params.items()}
        norm = torch.nn.utils.clip_grad_norm_(plist, MAX_GRAD_NORM)
        out["loss"].append(loss.detach().reshape(()))
        out["grad_norm"].append(norm.detach().reshape(()))
        out["lr"].append(opt.param_groups[0]["lr"])
        out["router_gap"].append(min(tap.gaps))
        opt.step()
        sched.step()
        opt.zero_grad()
    pm.eval()
    out["final"] = {k: p.detach().clone() for k, p in params.items()}
    logits, gap, _ = forward_logits(pm, ids)
    out["logits_final"] = logits
    out["router_gap_final"] = gap
    return out


def run_trajectory_by_hand(pm, ids, labels) -> dict:
    """The same loop with clip_grad_norm_, AdamW and the schedule written out as README /
    reference.json describe them, to check those descriptions against torch."""
    params = list(lora_params(pm).values())
    lr0, (b1, b2), eps, wd = OPT["lr"], OPT["betas"], OPT["eps"], OPT["weight_decay"]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses, norms = [], []
    pm.train()
    for s in range(STEPS):
        lr = lr0 * (s / WARMUP if s < WARMUP else 0.5 * (1.0 + math.cos(math.pi * (s - WARMUP) / (STEPS - WARMUP))))
        loss = pm(input_ids=ids, labels=labels).loss
        loss.backward()
        with torch.no_grad():
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad, 2) for p in params]), 2)
            coef = torch.clamp(MAX_GRAD_NORM / (total + 1e-6), max=1.0)
            t = s + 1
            for p, m_, v_ in zip(params, m, v):
                g = p.grad * coef
                p.mul_(1 - lr * wd)
                m_.lerp_(g, 1 - b1)
                v_.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v_.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
                p.addcdiv_(m_, denom, value=-lr / (1 - b1**t))
                p.grad = None
        losses.append(float(loss))
        norms.append(float(total))
    pm.eval()
    return {"loss": losses, "grad_norm": norms, "final": {k: p.detach().clone() for k, p in lora_params(pm).items()}}


def candidate(text: dict, seed: int, ids, labels) -> dict:
    """Everything the seed search looks at, in memory (no files)."""
    base = build_base(text, seed)
    lb, gap_base, _ = forward_logits(base, ids)
    torch.manual_seed(ADAPTER_SEED)
    pm = get_peft_model(base, lora_config())
    la, gap_adapter, _ = forward_logits(pm, ids)
    traj = run_trajectory(pm, ids, labels)
    gaps = [gap_base, gap_adapter, *traj["router_gap"], traj["router_gap_final"]]
    return {"gaps": gaps, "min_gap": min(gaps), "loss": [float(x) for x in traj["loss"]]}


def search_seed(text: dict, ids, labels) -> int:
    for seed in range(SEED_TRIES):
        c = candidate(text, seed, ids, labels)
        ok = c["min_gap"] >= MIN_ROUTER_GAP
        print(f"  seed {seed}: min router gap {c['min_gap']:.2e} (base, adapter, 10 steps, final), "
              f"loss {c['loss'][0]:.4f} -> {c['loss'][-1]:.4f}" + ("  <- ok" if ok else ""))
        if ok:
            return seed
    raise SystemExit(f"lora-tiny: no seed in range({SEED_TRIES}) keeps every router gap >= {MIN_ROUTER_GAP}")


# --------------------------------------------------------------------------------------------
# Format checks


def adapter_delta_by_index(A: torch.Tensor, B: torch.Tensor, E: int, r: int, scaling: float) -> torch.Tensor:
    """The documented layout, written with explicit indices (no reshape): for a 3-D parameter
    W [E, d1, d2], A [r*E, d2] has row e*r + j for (expert e, rank j), B [d1, r*E] has column
    j*E + e, and delta[e] = scaling * B_e @ A_e with B_e [d1, r], A_e [r, d2]."""
    d1, d2 = B.shape[0], A.shape[1]
    delta = torch.zeros(E, d1, d2, dtype=torch.float64)
    for e in range(E):
        Be = torch.stack([B[:, j * E + e] for j in range(r)], dim=1).double()  # [d1, r]
        Ae = torch.stack([A[e * r + j, :] for j in range(r)], dim=0).double()  # [r, d2]
        delta[e] = scaling * (Be @ Ae)
    return delta


@torch.no_grad()
def check_layout(adapter_file: dict, base_sd: dict, text: dict) -> dict:
    """Merge the saved adapter with PEFT (merge_and_unload) and compare every changed base weight
    with the layout rules applied to the saved tensors. Returns the max errors."""
    base = reload_base(REL_OUT)
    pm = PeftModel.from_pretrained(base, str(ADAPTER_DIR.relative_to(ROOT)))
    # Which ParamWrapper holds which parameter (nesting order), read from the live objects.
    nesting = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, ParamWrapper):
            key = name.replace("base_model.model.", "", 1)
            nesting[f"base_model.model.{key}.lora_A.weight"] = mod.parameter_name
    merged = pm.merge_and_unload()
    msd = {k: v for k, v in merged.state_dict().items()}
    E, r = text["num_local_experts"], LORA["r"]
    scaling = LORA["lora_alpha"] / LORA["r"]
    worst = {"linear": 0.0, "experts": 0.0, "router": 0.0}
    checked = 0
    for key in sorted(adapter_file):
        if ".lora_A." not in key:
            continue
        A = adapter_file[key]
        B = adapter_file[key.replace(".lora_A.", ".lora_B.")]
        module = key[len("base_model.model."):-len(".lora_A.weight")]
        if module.endswith("experts") or module.endswith("experts.base_layer"):
            pname = nesting[key]
            weight_key = module.replace(".base_layer", "") + "." + pname
            # experts.base_layer.lora_* belongs to the inner wrapper: gate_up_proj (first registered)
            assert pname == ("gate_up_proj" if module.endswith("base_layer") else "down_proj"), (key, pname)
            delta = adapter_delta_by_index(A, B, E, r, scaling)
            err = (msd[weight_key].double() - base_sd[weight_key].double() - delta).abs().max().item()
            worst["experts"] = max(worst["experts"], err)
            # The same delta with the reshape spelling used in the README.
            d2 = scaling * torch.einsum(
                "edr,erk->edk",
                B.reshape(B.shape[0], r, E).permute(2, 0, 1).double(),
                A.reshape(E, r, A.shape[1]).double(),
            )
            assert torch.allclose(d2, delta, atol=1e-12, rtol=0)
        else:
            weight_key = module + ".weight"
            delta = scaling * (B.double() @ A.double())
            err = (msd[weight_key].double() - base_sd[weight_key].double() - delta).abs().max().item()
            worst["router" if module.endswith("router") else "linear"] = max(
                worst["router" if module.endswith("router") else "linear"], err
            )
        checked += 1
    # Nothing else changed.
    touched = set()
    for key in adapter_file:
        module = key[len("base_model.model."):].rsplit(".lora_", 1)[0]
        if module.endswith("experts.base_layer"):
            touched.add(module.replace(".base_layer", "") + ".gate_up_proj")
        elif module.endswith("experts"):
            touched.add(module + ".down_proj")
        else:
            touched.add(module + ".weight")
    assert set(msd) == set(base_sd), "merge_and_unload changed the key set"
    for k in base_sd:
        if k not in touched:
            assert torch.equal(msd[k], base_sd[k]), f"{k} changed by merge but has no LoRA"
    print(f"  merge_and_unload vs layout rules on {checked} LoRA pairs: max err {worst}")
    for v in worst.values():
        assert v < 1e-5, worst
    return {"max_err_vs_merge": worst, "pairs_checked": checked, "nesting": nesting, "merged": merged}


def probe_refusals(text: dict, ids) -> dict:
    """What PEFT refuses, with the messages (none of this is saved in the fixture)."""
    out = {}
    # 1. "router" in target_modules: accepted at creation, fails at the first forward.
    base = build_base(text, 0)
    pm = get_peft_model(base, lora_config(target_modules=ASKED_TARGET_MODULES, target_parameters=ASKED_TARGET_PARAMETERS))
    wrapped = type(pm.base_model.model.model.layers[1].feed_forward.router).__name__
    try:
        pm(input_ids=ids)
        out["router_in_target_modules"] = f"works (wrapped as {wrapped})"
    except Exception as e:  # noqa: BLE001
        out["router_in_target_modules"] = (
            f"get_peft_model accepts it (router becomes lora.{wrapped}), but forward raises "
            f"{type(e).__name__}: {e} (Llama4Router.forward returns (scores, logits); lora.Linear adds to that tuple)"
        )
    # 2. lora_dropout > 0 with target_parameters.
    try:
        get_peft_model(build_base(text, 0), lora_config(lora_dropout=0.1))
        out["lora_dropout_with_target_parameters"] = "accepted"
    except Exception as e:  # noqa: BLE001
        out["lora_dropout_with_target_parameters"] = f"{type(e).__name__}: {e}"
    # 3. target_modules + target_parameters together: accepted (the fixture uses both).
    out["target_modules_plus_target_parameters"] = "accepted (used by this fixture)"
    # 4. The experts' key names depend on which of its parameters are targeted (nesting).
    for targets in (["feed_forward.experts.gate_up_proj"], ["feed_forward.experts.down_proj"],
                    ["feed_forward.experts.down_proj", "feed_forward.experts.gate_up_proj"]):
        pm = get_peft_model(build_base(text, 0), lora_config(target_modules=None, target_parameters=targets))
        keys = {}
        for name, mod in pm.named_modules():
            if isinstance(mod, ParamWrapper) and ".layers.1." in name:
                key = name.replace(".default", "")
                keys[f"{key}.lora_A.weight"] = f"{mod.parameter_name} {list(mod.lora_A[ADAPTER].weight.shape)}"
                keys[f"{key}.lora_B.weight"] = f"{mod.parameter_name} {list(mod.lora_B[ADAPTER].weight.shape)}"
        out[f"experts_keys_when_targeting {targets}"] = keys
    for k, v in out.items():
        print(f"  {k}: {v}")
    return out


def probe_multimodal() -> dict:
    """A tiny Llama4ForConditionalGeneration (fixtures/sharded-bf16's shapes, f32): the key prefix
    of a LoRA on q_proj, and which vision modules the text target names also match."""
    spec = dict(next(s for s in mf.FIXTURES if s["name"] == "sharded-bf16"), dtype=torch.float32)
    out = {}
    m = mf.build_model(spec, 0)
    pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        with safetensors.safe_open(f"{tmp}/adapter_model.safetensors", "pt") as f:
            keys = {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}
    out["q_proj_only_keys"] = keys
    out["vision_keys_matched_by_q_proj"] = sorted(k for k in keys if ".vision_model." in k)

    m = mf.build_model(spec, 0)
    pm = get_peft_model(m, lora_config(task_type=None))
    matched = sorted({n.rsplit(".lora_", 1)[0] for n, _ in pm.named_parameters() if "lora_" in n})
    out["full_target_list_non_text_modules"] = [n for n in matched if ".language_model." not in n]
    out["full_target_list_text_modules"] = len([n for n in matched if ".language_model." in n])

    regex = r".*language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|feed_forward\.(shared_expert\.)?(gate|up|down)_proj)"
    m = mf.build_model(spec, 0)
    pm = get_peft_model(m, lora_config(task_type=None, target_modules=regex))
    matched = sorted({n.rsplit(".lora_", 1)[0] for n, _ in pm.named_parameters() if "lora_" in n})
    out["text_only_regex"] = regex
    out["text_only_regex_non_text_modules"] = [n for n in matched if ".language_model." not in n]
    out["text_only_regex_text_modules"] = len(matched)
    print(f"  q_proj-only keys: {len(keys)}, e.g. {next(iter(keys))}")
    print(f"  vision keys matched by 'q_proj': {out['vision_keys_matched_by_q_proj']}")
    print(f"  full target list also matches: {out['full_target_list_non_text_modules']}")
    print(f"  text-only regex: {out['text_only_regex_text_modules']} modules, non-text {out['text_only_regex_non_text_modules']}")
    return out


# --------------------------------------------------------------------------------------------


def main():
    t0 = time.time()
    os.chdir(ROOT)
    print(f"versions: {VERSIONS}")
    text = text_config()
    vocab, pad = text["vocab_size"], text["pad_token_id"]
    ids, labels = make_batch(vocab, pad)
    n_targets = int((torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:] != -100).sum())
    print(f"batch ids {list(ids.shape)}, label targets {n_targets}\n  row0 {ids[0].tolist()}\n  row1 {ids[1].tolist()}")

    print("\n=== seed search (router gap >= 5e-4 on every token of every pass)")
    seed = search_seed(text, ids, labels)

    print("\n=== base checkpoint")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    build_base(text, seed).save_pretrained(OUT)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(CHAT / f, OUT / f)
    gen_written = (OUT / "generation_config.json").read_bytes()
    same_gen = gen_written == (CHAT / "generation_config.json").read_bytes()
    print(f"  generation_config.json from save_pretrained == chat-tiny's: {same_gen}")
    if not same_gen:
        shutil.copyfile(CHAT / "generation_config.json", OUT / "generation_config.json")
    with safetensors.safe_open(OUT / "model.safetensors", "pt") as f:
        base_keys = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in sorted(f.keys())}
    for k, (shape, dt) in base_keys.items():
        if ".layers.1." in k or ".layers.0.feed_forward" in k:
            print(f"  {k:55s} {dt} {shape}")
    D, F, E = text["hidden_size"], text["intermediate_size"], text["num_local_experts"]
    assert base_keys["model.layers.1.feed_forward.experts.gate_up_proj"] == ([E, D, 2 * F], "F32")
    assert base_keys["model.layers.1.feed_forward.experts.down_proj"] == ([E, F, D], "F32")
    assert "model.layers.0.feed_forward.gate_proj.weight" in base_keys and not any(".layers.0.feed_forward.experts" in k for k in base_keys)

    base = reload_base(REL_OUT)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    logits_base, gap_base, experts_base = forward_logits(base, ids)
    base.train()
    assert torch.equal(base(input_ids=ids).logits.detach(), logits_base), "train() changes the logits"
    base.eval()

    print("\n=== adapter (get_peft_model on the reloaded base, saved by PEFT)")
    torch.manual_seed(ADAPTER_SEED)
    pm0 = get_peft_model(reload_base(REL_OUT), lora_config())
    pm0.print_trainable_parameters()
    pm0.save_pretrained(ADAPTER_DIR)
    adapter_cfg = json.loads((ADAPTER_DIR / "adapter_config.json").read_text())
    adapter_file = safetensors.torch.load_file(ADAPTER_DIR / "adapter_model.safetensors")
    with safetensors.safe_open(ADAPTER_DIR / "adapter_model.safetensors", "pt") as f:
        adapter_meta = f.metadata()
        adapter_keys = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in sorted(f.keys())}
    assert set(adapter_keys) == set(lora_params(pm0)), "saved keys != trainable parameter names minus '.default'"
    print(f"  adapter_model.safetensors: {len(adapter_keys)} tensors, metadata {adapter_meta}")
    for k, (shape, dt) in adapter_keys.items():
        if ".layers.0." in k or ".layers.1." in k:
            print(f"  {k:80s} {dt} {shape}")
    print("  adapter_config.json:\n" + (ADAPTER_DIR / "adapter_config.json").read_text())

    # Everything below uses the adapter as PEFT loads it back, unchanged.
    pm = PeftModel.from_pretrained(reload_base(REL_OUT), str(ADAPTER_DIR.relative_to(ROOT)), is_trainable=True)
    for k, p in lora_params(pm).items():
        assert torch.equal(p.detach(), adapter_file[k]), f"{k} differs after PeftModel.from_pretrained"
    logits_adapter, gap_adapter, experts_adapter = forward_logits(pm, ids)
    ref0, _, _ = forward_logits(pm0, ids)
    assert torch.equal(ref0, logits_adapter), "in-memory adapter and reloaded adapter disagree"
    with pm.disable_adapter():
        off, _, _ = forward_logits(pm, ids)
    assert torch.equal(off, logits_base), "disable_adapter() != base model"
    print(f"  max|logits_adapter - logits_base| {float((logits_adapter - logits_base).abs().max()):.3f}")

    print("\n=== loss and LoRA gradients (train mode, dropout 0)")
    pm.train()
    out = pm(input_ids=ids, labels=labels)
    assert torch.equal(out.logits.detach(), logits_adapter), "train() changes the adapter logits"
    loss_adapter = out.loss.detach()
    man = manual_loss(out.logits.detach(), labels)
    assert torch.equal(man, loss_adapter), (float(man), float(loss_adapter))
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in lora_params(pm).items()}
    pm.zero_grad(set_to_none=True)
    pm.eval()
    E_, r_ = text["num_local_experts"], LORA["r"]
    zero_grad_experts = {}
    for k, g in grads.items():
        if ".experts." in k:
            per = [g[e * r_:(e + 1) * r_] if ".lora_A." in k else g[:, [j * E_ + e for j in range(r_)]] for e in range(E_)]
            zero_grad_experts[k] = [e for e in range(E_) if not bool(per[e].any())]
    print(f"  experts whose LoRA slice has an all-zero gradient (never routed): {sorted(set(map(str, zero_grad_experts.values())))}")
    print(f"  loss_adapter {float(loss_adapter):.6f}; grad norms " + ", ".join(
        f"{k.split('layers.')[1]}={float(g.norm()):.3e}" for k, g in list(grads.items())[:4]) + ", ...")

    print("\n=== 10-step AdamW trajectory (HF Trainer order)")
    traj = run_trajectory(pm, ids, labels)
    for k in grads:
        assert torch.equal(traj["first_grads"][k], grads[k]), f"step-0 grad of {k} != grad.{k}"
    assert torch.equal(traj["loss"][0], loss_adapter)
    for i in range(STEPS):
        print(f"  step {i}: lr {traj['lr'][i]:.6e}  loss {float(traj['loss'][i]):.6f}  "
              f"grad_norm {float(traj['grad_norm'][i]):.6f}  router gap {traj['router_gap'][i]:.2e}")
    print(f"  final: router gap {traj['router_gap_final']:.2e}")
    expect_lr = [OPT["lr"] * (s / WARMUP if s < WARMUP else 0.5 * (1 + math.cos(math.pi * (s - WARMUP) / (STEPS - WARMUP))))
                 for s in range(STEPS)]
    assert all(abs(a - b) < 1e-15 for a, b in zip(traj["lr"], expect_lr)), (traj["lr"], expect_lr)

    hand = run_trajectory_by_hand(
        PeftModel.from_pretrained(reload_base(REL_OUT), str(ADAPTER_DIR.relative_to(ROOT)), is_trainable=True), ids, labels)
    by_hand = {
        "max_abs_final": float(max((hand["final"][k] - traj["final"][k]).abs().max() for k in traj["final"])),
        "bit_equal_final": all(torch.equal(hand["final"][k], traj["final"][k]) for k in traj["final"]),
        "max_abs_loss": max(abs(a - float(b)) for a, b in zip(hand["loss"], traj["loss"])),
        "max_abs_grad_norm": max(abs(a - float(b)) for a, b in zip(hand["grad_norm"], traj["grad_norm"])),
    }
    print(f"  written-out clip + AdamW + schedule vs torch: {by_hand}")
    assert by_hand["max_abs_final"] < 1e-6 and by_hand["max_abs_loss"] < 1e-6, by_hand

    print("\n=== the same trajectory in float64 (how far f32 rounding moves it)")
    pm64 = PeftModel.from_pretrained(reload_base(REL_OUT), str(ADAPTER_DIR.relative_to(ROOT)), is_trainable=True).double()
    traj64 = run_trajectory(pm64, ids, labels)
    f64 = {
        "max_abs_traj_loss": float(max(abs(float(a) - float(b)) for a, b in zip(traj["loss"], traj64["loss"]))),
        "max_abs_traj_grad_norm": float(max(abs(float(a) - float(b)) for a, b in zip(traj["grad_norm"], traj64["grad_norm"]))),
        "max_abs_final_lora": float(max((traj["final"][k].double() - traj64["final"][k]).abs().max() for k in traj["final"])),
        "max_abs_logits_final": float((traj["logits_final"].double() - traj64["logits_final"]).abs().max()),
        "max_abs_step0_grad": float(max((traj["first_grads"][k].double() - traj64["first_grads"][k]).abs().max() for k in grads)),
    }
    print("  " + ", ".join(f"{k} {v:.2e}" for k, v in f64.items()))
    del pm64, traj64

    print("\n=== full fine-tuning gradients (no adapter)")
    full = reload_base(REL_OUT).train()
    fo = full(input_ids=ids, labels=labels)
    loss_base = fo.loss.detach()
    assert torch.equal(manual_loss(fo.logits.detach(), labels), loss_base)
    assert torch.equal(fo.logits.detach(), logits_base)
    fo.loss.backward()
    named = dict(full.named_parameters())
    grad_full = {k: named[k].grad.detach().clone() for k in FULL_GRAD_PARAMS}
    print(f"  loss_base {float(loss_base):.6f}")
    for k, g in grad_full.items():
        print(f"  grad_full.{k:50s} {list(g.shape)} norm {float(g.norm()):.4e}")

    print("\n=== adapter layout vs merge_and_unload")
    layout = check_layout(adapter_file, base_sd, text)
    merged_logits, _, _ = forward_logits(layout.pop("merged"), ids)
    layout["max_abs_merged_logits_vs_logits_adapter"] = float((merged_logits - logits_adapter).abs().max())
    print(f"  merged model logits vs logits_adapter: {layout['max_abs_merged_logits_vs_logits_adapter']:.2e}")
    print(f"  nesting: {json.dumps({k.split('layers.')[1]: v for k, v in layout['nesting'].items()})}")

    print("\n=== what PEFT refuses")
    refusals = probe_refusals(text, ids)

    print("\n=== Llama4ForConditionalGeneration (not saved)")
    multimodal = probe_multimodal()

    # ---------------------------------------------------------------------------------------
    tensors = {
        "batch.ids": ids,
        "batch.labels": labels,
        "logits_base": logits_base,
        "logits_adapter": logits_adapter,
        "logits_final": traj["logits_final"],
        "loss_adapter": loss_adapter.reshape(1),
        "loss_base": loss_base.reshape(1),
        "traj_loss": torch.stack(traj["loss"]),
        "traj_grad_norm": torch.stack(traj["grad_norm"]),
        "traj_lr": torch.tensor(traj["lr"], dtype=torch.float32),
    }
    tensors.update({f"grad.{k}": v for k, v in grads.items()})
    tensors.update({f"final.{k}": v for k, v in traj["final"].items()})
    tensors.update({f"grad_full.{k}": v for k, v in grad_full.items()})
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, OUT / "reference.safetensors",
                                metadata={"format": "pt"})

    meta = {
        "fixture_version": mf.FIXTURE_VERSION,
        "generator": GENERATOR,
        "command": "/work/refenv/bin/python tools/reference/make_lora_tiny.py",
        "versions": VERSIONS,
        "fixture": "lora-tiny",
        "weights_dtype": "float32",
        "n_prompts": 0,
        "weights_seed": seed,
        "weights_init": "matrices N(0, 0.15^2), router N(0, 0.3^2), norm gains 1 + N(0, 0.1^2) (make_fixtures.init_weights); "
                        "torch.Generator().manual_seed(weights_seed) over sorted(named_parameters())",
        "model": {
            "class": "Llama4ForCausalLM",
            "model_type": "llama4_text",
            "from": "fixtures/chat-tiny/config.json with interleave_moe_layer_step 2, moe_layers [1, 3], intermediate_size 24",
            "layers": ["dense chunked-rope", "moe chunked-rope", "dense chunked-rope", "moe global-nope"],
            "hidden_size": D, "intermediate_size": F, "intermediate_size_mlp": text["intermediate_size_mlp"],
            "num_local_experts": E, "num_experts_per_tok": text["num_experts_per_tok"],
            "attention_chunk_size": text["attention_chunk_size"], "vocab_size": vocab,
            "attn_implementation": "eager",
            "base_keys": {k: {"shape": s, "dtype": d} for k, (s, d) in base_keys.items()},
            "fused_experts": "model.layers.{1,3}.feed_forward.experts.gate_up_proj F32 [E, D, 2F] (gate = [..., :F], up = [..., F:]) "
                             "and .down_proj F32 [E, F, D]; y = x @ W[e]",
            "tokenizer": "tokenizer.json, tokenizer_config.json copied from fixtures/chat-tiny",
            "generation_config_equal_to_chat_tiny": same_gen,
        },
        "batch": {
            "seed": BATCH_SEED,
            "ids": f"int64 [{BATCH}, {SEQ}] drawn uniformly from [0, {vocab}) minus pad {pad} with torch.Generator().manual_seed({BATCH_SEED})",
            "labels": f"ids with -100 on the first {MASKED[0]} positions of row 0 and the first {MASKED[1]} of row 1",
            "label_targets": n_targets,
            "loss": "transformers ForCausalLMLoss, no num_items_in_batch: logits[:, t] predicts labels[:, t+1] "
                    "(labels padded with -100 at the end), cross_entropy(mean) over targets != -100 "
                    f"({SEQ - MASKED[0]} + {SEQ - MASKED[1]} = {n_targets} targets); no router aux loss "
                    "(output_router_logits false)",
            "mode": "model.train(); attention_dropout 0, lora_dropout 0 (train and eval logits are asserted equal)",
        },
        "lora": {
            "config": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in LORA.items()},
            "asked": {"target_modules": ASKED_TARGET_MODULES, "target_parameters": ASKED_TARGET_PARAMETERS},
            "deviation": "router is adapted via target_parameters 'feed_forward.router.weight', not target_modules 'router' (see refusals)",
            "scaling": LORA["lora_alpha"] / LORA["r"],
            "init": f"init_lora_weights=False: nn.Linear default init (kaiming_uniform a=sqrt(5)) of lora_A and lora_B, "
                    f"torch.manual_seed({ADAPTER_SEED}) before get_peft_model",
            "adapter_seed": ADAPTER_SEED,
            "adapter_dir": "peft-adapter (PeftModel.save_pretrained, unchanged)",
            "adapter_config": adapter_cfg,
            "adapter_safetensors_metadata": adapter_meta,
            "keys": {k: {"shape": s, "dtype": d} for k, (s, d) in adapter_keys.items()},
            "param_wrapper_nesting": layout["nesting"],
            "layout_3d": "W [E, d1, d2] (gate_up_proj [E, D, 2F], down_proj [E, F, D]); lora_A.weight [r*E, d2], row e*r + j; "
                         "lora_B.weight [d1, r*E], column j*E + e; delta[e] = scaling * B_e @ A_e, B_e [d1, r], A_e [r, d2]; "
                         "i.e. A.reshape(E, r, d2), B.reshape(d1, r, E).permute(2, 0, 1)",
            "layout_2d": "W [out, in]: lora_A.weight [r, in], lora_B.weight [out, r], delta = scaling * B @ A",
            "layout_check": {k: v for k, v in layout.items() if k != "nesting"},
            "experts_with_all_zero_grad": zero_grad_experts,
        },
        "refusals": refusals,
        "multimodal_probe": multimodal,
        "training": {
            "optimizer": "torch.optim.AdamW(lora params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01); "
                         "CPU: single-tensor implementation (foreach/fused off)",
            "adamw_step": "p *= 1 - lr*wd; m = b1*m + (1-b1)*g (lerp); v = b2*v + (1-b2)*g*g; "
                          "p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = 1, 2, ... counted from the first step "
                          "(also when lr is 0)",
            "schedule": "transformers.get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10): "
                        "lr_s = lr * (s/2 if s < 2 else 0.5*(1 + cos(pi*(s-2)/8))); step 0 runs with lr 0",
            "clip": "torch.nn.utils.clip_grad_norm_(params, 1.0): total = ||(||g_i||_2)_i||_2 over the LoRA tensors; "
                    "every grad *= min(1, 1.0/(total + 1e-6)); traj_grad_norm is total (before clipping)",
            "order": "forward with labels; loss.backward(); clip_grad_norm_; optimizer.step(); scheduler.step(); zero_grad()",
            "steps": STEPS,
            "batch": "the same batch every step",
            "param_order": "PEFT named_parameters() order (for the clip norm sum)",
            "traj_lr": traj["lr"],
            "traj_loss": [float(x) for x in traj["loss"]],
            "traj_grad_norm": [float(x) for x in traj["grad_norm"]],
            "float64_vs_float32": f64,
            "written_out_vs_torch": by_hand,
        },
        "full_finetune": {
            "loss_base": float(loss_base),
            "grad_full": "d loss_base / d param for the listed HF parameter names, no adapter, train mode",
            "params": FULL_GRAD_PARAMS,
        },
        "values": {
            "loss_adapter": float(loss_adapter),
            "loss_base": float(loss_base),
            "max_abs_logits_adapter_minus_base": float((logits_adapter - logits_base).abs().max()),
        },
        "margins": {
            "min_router_gap": min(gap_base, gap_adapter, *traj["router_gap"], traj["router_gap_final"]),
            "router_gap_base": gap_base,
            "router_gap_adapter": gap_adapter,
            "router_gap_traj": traj["router_gap"],
            "router_gap_final": traj["router_gap_final"],
            "required": MIN_ROUTER_GAP,
            "experts_base": [e.tolist() for e in experts_base],
            "experts_adapter": [e.tolist() for e in experts_adapter],
        },
        "tensors": {
            "batch.ids": "int64 [2, 24]",
            "batch.labels": "int64 [2, 24], -100 = ignored",
            "logits_base": "f32 [2, 24, V]: base model, no adapter, eval, full pass",
            "logits_adapter": "f32 [2, 24, V]: PeftModel.from_pretrained(base, peft-adapter)",
            "logits_final": "f32 [2, 24, V]: the adapter after the 10 steps",
            "loss_adapter": "f32 [1]", "loss_base": "f32 [1]",
            "grad.<adapter key>": "d loss_adapter / d LoRA tensor, one per key of peft-adapter/adapter_model.safetensors",
            "final.<adapter key>": "LoRA tensors after the 10 steps",
            "traj_loss": "f32 [10], loss before step s", "traj_grad_norm": "f32 [10], before clipping",
            "traj_lr": "f32 [10], lr used by step s (exact values in training.traj_lr)",
            "grad_full.<HF param name>": "d loss_base / d base weight",
        },
    }
    assert n_targets == (SEQ - MASKED[0]) + (SEQ - MASKED[1])
    assert meta["margins"]["min_router_gap"] >= MIN_ROUTER_GAP, meta["margins"]
    (OUT / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")

    print("\n--- files")
    total = 0
    for f in sorted(p for p in OUT.rglob("*") if p.is_file()):
        total += f.stat().st_size
        print(f"  {str(f.relative_to(OUT)):40s} {f.stat().st_size:9d}  {sha256(f)[:16]}")
    print(f"  total {total} bytes")
    print(f"\n--- summary: seed {seed}, loss_base {float(loss_base):.6f}, loss_adapter {float(loss_adapter):.6f}, "
          f"final loss {float(traj['loss'][-1]):.6f}, min router gap {meta['margins']['min_router_gap']:.2e}, "
          f"{time.time() - t0:.1f} s")
    assert total < MAX_TOTAL_BYTES, f"lora-tiny is {total} bytes (limit {MAX_TOTAL_BYTES})"


if __name__ == "__main__":
    main()
