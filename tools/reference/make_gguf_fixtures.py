#!/usr/bin/env python3
"""Generate fixtures/gguf-tiny/: a tiny Llama 4 checkpoint converted to GGUF by llama.cpp's OWN
converter (convert_hf_to_gguf.py), plus float32 reference logits for the bf16 and the Q8_0 file,
and (optional step) Q4_K_M / Q6_K files written by llama.cpp's own llama-quantize, with references.

Run from the repository root (see tools/reference/README.md, section "gguf-tiny"):

    LLAMA_QUANTIZE=/work/llama-build/build/bin/llama-quantize /work/refenv/bin/python tools/reference/make_gguf_fixtures.py

Without LLAMA_QUANTIZE (or --llama-quantize) the K-quant step is skipped (with a message) and the
folder lacks model-q4_k_m.gguf, model-q6_k.gguf and the q4_k_m.* / q6_k.* references.

It needs the converter from the llama-cpp-python sdist pinned in requirements-gguf.txt, unpacked
outside the repository (default /work/llama-cpp-python/llama_cpp_python-<version>/vendor/llama.cpp,
override with --llama-cpp DIR). Nothing in that tree is edited: the one change the converter needs
(pre-tokenizer detection, see patched_convert_code) is a monkeypatch applied in a subprocess.

What it writes (everything is deleted and rewritten):
  config.json, generation_config.json, model.safetensors (bf16)   the HF checkpoint
  tokenizer.json, tokenizer_config.json                          copied from fixtures/chat-tiny
  model-bf16.gguf, model-q8_0.gguf (and model-f32.gguf if small)  written by convert_hf_to_gguf.py
  model-q4_k_m.gguf, model-q6_k.gguf                             llama-quantize model-bf16.gguf ... (optional)
  reference.safetensors, reference.json                           float32 transformers logits
  gguf_layout.txt                                                 every GGUF key and tensor

The model follows llama.cpp's llama4 conventions (which a GGUF cannot express, because llama.cpp
hard-codes them): chunk 8192, floor_scale 8192, attn_scale 0.1, temperature tuning on, NoPE every
4th layer, qk-norm on RoPE layers, sigmoid top-k routing. Its rope is Scout's llama3 scaling, which
the converter turns into a `rope_freqs` tensor that llama.cpp applies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import DynamicCache, Llama4ForCausalLM, Llama4TextConfig

FIXTURE_VERSION = 1  # shared with herd-testkit (one version for all fixtures); the format only gained tensors
GENERATOR = "tools/reference/make_gguf_fixtures.py"
NAME = "gguf-tiny"
GREEDY_TOKENS = 16
MIN_LOGIT_GAP = 1e-3
MIN_ROUTER_GAP = 5e-4
SEED_TRIES = 400
# Pinned result of the search (--search-seed re-runs it, ~5 min on 2 idle cores): 49 is the first seed
# meeting every margin of both the bf16 and the (simulated) Q8_0 model with intermediate_size_mlp 512;
# see README.md "gguf-tiny". (17 was the first with intermediate_size_mlp 256.)
WEIGHTS_SEED = 49

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
DEFAULT_LLAMA_CPP = Path(f"/work/llama-cpp-python/llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp")
# The optional K-quant step: llama.cpp's llama-quantize built from that same vendored tree (README
# "gguf-tiny" has the cmake lines). File tag -> llama-quantize type. Never part of the seed search.
# Q2_K and Q3_K_M bring Q2_K / Q3_K blocks (with Q3_K..Q6_K where llama.cpp's rules give more bits);
# Q4_1, Q5_0 and Q5_1 are the legacy 32-value formats; IQ4_NL and IQ4_XS the 4-bit i-quants (which
# llama-quantize writes without an importance matrix).
K_QUANTS = {"q4_k_m": "Q4_K_M", "q6_k": "Q6_K", "q3_k_m": "Q3_K_M", "q2_k": "Q2_K", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1",
            "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS"}
LLAMA_QUANTIZE_THREADS = 2
LLAMA_QUANTIZE_BUILD = (
    "cmake -S <sdist>/vendor/llama.cpp -B /work/llama-build/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF "
    "-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF "
    "-DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT=0c1e57098 && "
    "cmake --build /work/llama-build/build -j2 --target llama-quantize  (cmake 3.31.6 and ninja 1.13.2 from PyPI, GCC 12.2.0)"
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / NAME
TOKENIZER_SRC = ROOT / "fixtures" / "chat-tiny"
MAX_FIXTURE_BYTES = 20_000_000  # model-f32.gguf is only written if the folder stays below this

# Prompts: one long prompt crossing the 8192 chunk boundary, two short ones.
LONG_LEN = 8200
LONG_ROWS = list(range(0, 8)) + list(range(8184, 8200))
SHORT_LENS = [5, 40]
PROMPT_SEED = 3001
EAGER_CHECK_LEN = 512  # sdpa vs eager, all positions (and the full long prompt once, bf16 only)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()  # high_freq_factor == low_freq_factor warning (Scout's own values)

# Tokenizer of fixtures/chat-tiny: 497 BPE ids, then 15 Llama 4 specials 497..511.
N_NORMAL = 497
SPECIALS = list(range(497, 512))

TEXT = dict(
    vocab_size=512,
    hidden_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_hidden_layers=4,  # layer 3 NoPE
    intermediate_size=256,  # expert (and shared expert) width: llama4.expert_feed_forward_length
    intermediate_size_mlp=512,  # dense FFN width (layers 0, 2): llama4.feed_forward_length; != 256 on purpose
    num_local_experts=4,
    num_experts_per_tok=1,
    interleave_moe_layer_step=2,  # MoE on layers 1, 3 (llama.cpp: (il+1) % step == 0)
    use_qk_norm=True,  # llama.cpp: use_kq_norm = (n_expert != 128)
    attention_chunk_size=8192,  # llama.cpp: n_swa = 8192, hard-coded
    no_rope_layer_interval=4,  # llama.cpp: n_no_rope_layer_step = 4, hard-coded default
    attn_temperature_tuning=True,  # llama.cpp: always on for llama4 with chunking
    floor_scale=8192,  # llama.cpp: n_attn_temp_floor_scale = 8192, hard-coded
    attn_scale=0.1,  # llama.cpp: f_attn_temp_scale = 0.1, hard-coded
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 16.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
    max_position_embeddings=16384,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=497,  # <|begin_of_text|>
    eos_token_id=[498, 501, 502],  # <|end_of_text|>, <|eom|>, <|eot|>
    pad_token_id=505,  # <|finetune_right_pad|>
)

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# --------------------------------------------------------------------------------------------
# llama.cpp's converter and gguf-py


def setup_llama_cpp(path: Path):
    """Import gguf-py from the pinned llama.cpp tree (not from site-packages)."""
    global gguf, LLAMA_CPP
    LLAMA_CPP = path.resolve()
    conv = LLAMA_CPP / "convert_hf_to_gguf.py"
    if not conv.is_file():
        raise SystemExit(f"{conv} not found: unpack llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (see README) or pass --llama-cpp")
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    import gguf as _gguf  # noqa: E402

    gguf = _gguf
    assert Path(gguf.__file__).resolve().is_relative_to(LLAMA_CPP), gguf.__file__
    gguf_version = "?"
    for line in (LLAMA_CPP / "gguf-py" / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            gguf_version = line.split("=", 1)[1].strip().strip('"')
            break
    VERSIONS["llama_cpp_python_sdist"] = LLAMA_CPP_PYTHON_VERSION
    VERSIONS["gguf_py"] = gguf_version
    print(f"llama.cpp converter: {conv} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, gguf-py {gguf_version})")


# The converter identifies the BPE pre-tokenizer by hashing the token ids of a fixed test string
# (get_vocab_base_pre). Our tiny tokenizer has Llama 4's exact pre-tokenizer, normalizer,
# post-processor and decoder (asserted by make_chat_tiny.py) but only 512 ids, so the hash is
# unknown and the converter raises NotImplementedError. The wrapper below lets the original run
# (so any known hash still wins) and answers "llama4" only for the unknown-hash case. It runs in a
# subprocess; the vendored files are not modified.
CONVERT_WRAPPER = r"""
import logging, runpy, sys
llama_cpp, argv = sys.argv[1], sys.argv[2:]
sys.path[:0] = [llama_cpp, llama_cpp + "/gguf-py"]
import conversion.base as base
orig = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        logging.getLogger("make_gguf_fixtures").warning(
            "pre-tokenizer hash not recognised (tiny vocab); using 'llama4' (the tokenizer has Llama 4's pre-tokenizer)")
        return "llama4"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [llama_cpp + "/convert_hf_to_gguf.py"] + argv
runpy.run_path(llama_cpp + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def convert_commands(outtype: str) -> tuple[list[str], str]:
    out = OUT / f"model-{outtype}.gguf"
    argv = [str(OUT), "--outtype", outtype, "--outfile", str(out)]
    shown = f"python {LLAMA_CPP}/convert_hf_to_gguf.py {' '.join(str(a).replace(str(ROOT) + '/', '') for a in argv)}"
    return argv, shown


def run_converter(outtype: str) -> str:
    argv, shown = convert_commands(outtype)
    print(f"\n--- convert ({outtype}): {shown}  [with the pre-tokenizer patch]")
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py
    res = subprocess.run(
        [sys.executable, "-c", CONVERT_WRAPPER, str(LLAMA_CPP), *argv],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    log = res.stdout + res.stderr
    skipping = 0
    for line in log.splitlines():
        # The converter logs the whole chat template (continuation lines) and tqdm progress bars
        # (timing-dependent); print a line count instead.
        if skipping and not line.startswith(("INFO:", "WARNING:", "ERROR:", "[transformers]")):
            skipping += 1
            continue
        if skipping:
            print(f"  | ... ({skipping - 1} more lines of chat template)")
            skipping = 0
        if line.startswith("INFO:gguf.vocab:Setting chat_template to"):
            skipping = 1
            line = line[:80] + " ..."
        if line.startswith("Writing:") or "Writing:" in line and "byte/s" in line:
            continue
        print("  | " + line)
    if res.returncode != 0:
        raise SystemExit(f"converter failed ({outtype}), rc {res.returncode}")
    print(f"  converted in {time.perf_counter() - t0:.1f} s")
    return shown


def run_llama_quantize(exe: Path, tag: str) -> tuple[str, str]:
    """llama-quantize model-bf16.gguf model-<tag>.gguf <TYPE> <threads>: llama.cpp's own K-quant
    mixture (no imatrix). Returns the command as shown and llama-quantize's version line."""
    src, dst, qtype = OUT / "model-bf16.gguf", OUT / f"model-{tag}.gguf", K_QUANTS[tag]
    argv = [str(exe), str(src), str(dst), qtype, str(LLAMA_QUANTIZE_THREADS)]
    shown = f"llama-quantize {src.relative_to(ROOT)} {dst.relative_to(ROOT)} {qtype} {LLAMA_QUANTIZE_THREADS}"
    print(f"\n--- llama-quantize ({qtype}): {shown}")
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = res.stdout + res.stderr
    version = "?"
    for line in log.splitlines():
        if line.lower().startswith("version:"):  # "Version:" on a terminal, "version:" otherwise
            version = line.split(":", 1)[1].strip()
        if line.startswith("built with"):
            version += f"; {line.strip()}"
        # per-tensor lines ("[  1/ 48] name - [ne], type = bf16, converting to q6_K .. size = ..."), totals, errors
        if line.startswith("[") or "model size" in line or "quant size" in line or "error" in line.lower() or "failed" in line:
            print("  | " + line.strip())
    if res.returncode != 0 or not dst.is_file():
        print(log)
        raise SystemExit(f"llama-quantize failed ({qtype}), rc {res.returncode}")
    print(f"  quantized in {time.perf_counter() - t0:.1f} s; llama-quantize {version}")
    return shown, version


# --------------------------------------------------------------------------------------------
# Model


def build_config(impl: str = "sdpa") -> Llama4TextConfig:
    cfg = Llama4TextConfig(**TEXT, initializer_range=0.02)
    cfg._attn_implementation = impl
    return cfg


@torch.no_grad()
def init_weights(model, seed: int):
    """As make_fixtures.py (std 0.15 at fan-in 64), with matrix stds scaled by sqrt(64/fan_in) so
    activations have the same size at hidden 256; routers 0.3 so router logits spread apart; norm
    gains 1 + N(0, 0.1). Rows of the 15 specials in lm_head are scaled by 0.01 so greedy decoding
    never emits one."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.ndim == 1:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("router.weight"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
        else:
            # nn.Linear [out, in]; experts gate_up_proj [E, H, 2F] and down_proj [E, F, H] (in = dim -2)
            fan_in = p.shape[-2] if name.endswith(("gate_up_proj", "experts.down_proj")) else p.shape[-1]
            p.copy_(0.15 * math.sqrt(64 / fan_in) * torch.randn(p.shape, generator=g))
    for i in SPECIALS:
        model.lm_head.weight[i] *= 0.01
    # The checkpoint is bf16: round now so the model equals what a bf16 -> f32 loader computes.
    # Parameters only (model.to(bf16) would also round the rope buffers).
    for p in model.parameters():
        p.copy_(p.to(torch.bfloat16).to(torch.float32))


def build_model(seed: int, impl: str = "sdpa"):
    torch.manual_seed(seed)
    model = Llama4ForCausalLM(build_config(impl))
    init_weights(model, seed)
    return model.eval()


def model_from_state(state: dict, impl: str = "sdpa"):
    model = Llama4ForCausalLM(build_config(impl)).eval()
    res = model.load_state_dict(state, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    return model


def make_prompts() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random non-special ids (0..496)."""
    g = torch.Generator().manual_seed(PROMPT_SEED)
    long = torch.randint(N_NORMAL, (LONG_LEN,), generator=g, dtype=torch.int64)
    short = [torch.randint(N_NORMAL, (n,), generator=g, dtype=torch.int64) for n in SHORT_LENS]
    return long, short


# --------------------------------------------------------------------------------------------
# HF <-> GGUF tensor layout (what convert_hf_to_gguf.py's Llama4Model does, and its inverse)
#
# numpy arrays below are in GGUF order: numpy shape = reversed ggml ne (ne0 is the last axis).


def hf_to_gguf(sd: dict[str, torch.Tensor], cfg) -> dict[str, np.ndarray]:
    out = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        # Llama4Model.undo_permute = False: q/k are written as they are (HF Llama 4 already
        # rotates interleaved pairs (2i, 2i+1), like ggml's "normal" rope).
        out[b + "attn_q.weight"] = sd[p + "self_attn.q_proj.weight"]
        out[b + "attn_k.weight"] = sd[p + "self_attn.k_proj.weight"]
        out[b + "attn_v.weight"] = sd[p + "self_attn.v_proj.weight"]
        out[b + "attn_output.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[b + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        ff = p + "feed_forward."
        if i in cfg.moe_layers:
            out[b + "ffn_gate_inp.weight"] = sd[ff + "router.weight"]
            gate_up = sd[ff + "experts.gate_up_proj"]  # [E, H, 2F]
            f = gate_up.shape[-1] // 2
            gate, up = gate_up.transpose(-1, -2).split(f, dim=-2)  # [E, F, H] each: gate first
            out[b + "ffn_gate_exps.weight"] = gate
            out[b + "ffn_up_exps.weight"] = up
            out[b + "ffn_down_exps.weight"] = sd[ff + "experts.down_proj"].transpose(-1, -2)  # [E,F,H] -> [E,H,F]
            out[b + "ffn_gate_shexp.weight"] = sd[ff + "shared_expert.gate_proj.weight"]
            out[b + "ffn_up_shexp.weight"] = sd[ff + "shared_expert.up_proj.weight"]
            out[b + "ffn_down_shexp.weight"] = sd[ff + "shared_expert.down_proj.weight"]
        else:
            out[b + "ffn_gate.weight"] = sd[ff + "gate_proj.weight"]
            out[b + "ffn_up.weight"] = sd[ff + "up_proj.weight"]
            out[b + "ffn_down.weight"] = sd[ff + "down_proj.weight"]
    return {k: v.float().contiguous().numpy() for k, v in out.items()}


def gguf_to_hf(t: dict[str, np.ndarray], cfg) -> dict[str, torch.Tensor]:
    g = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in t.items()}
    sd = {
        "model.embed_tokens.weight": g["token_embd.weight"],
        "model.norm.weight": g["output_norm.weight"],
        "lm_head.weight": g["output.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        sd[p + "input_layernorm.weight"] = g[b + "attn_norm.weight"]
        sd[p + "self_attn.q_proj.weight"] = g[b + "attn_q.weight"]
        sd[p + "self_attn.k_proj.weight"] = g[b + "attn_k.weight"]
        sd[p + "self_attn.v_proj.weight"] = g[b + "attn_v.weight"]
        sd[p + "self_attn.o_proj.weight"] = g[b + "attn_output.weight"]
        sd[p + "post_attention_layernorm.weight"] = g[b + "ffn_norm.weight"]
        ff = p + "feed_forward."
        if i in cfg.moe_layers:
            sd[ff + "router.weight"] = g[b + "ffn_gate_inp.weight"]
            gate_up = torch.cat([g[b + "ffn_gate_exps.weight"], g[b + "ffn_up_exps.weight"]], dim=-2)  # [E, 2F, H]
            sd[ff + "experts.gate_up_proj"] = gate_up.transpose(-1, -2).contiguous()
            sd[ff + "experts.down_proj"] = g[b + "ffn_down_exps.weight"].transpose(-1, -2).contiguous()
            sd[ff + "shared_expert.gate_proj.weight"] = g[b + "ffn_gate_shexp.weight"]
            sd[ff + "shared_expert.up_proj.weight"] = g[b + "ffn_up_shexp.weight"]
            sd[ff + "shared_expert.down_proj.weight"] = g[b + "ffn_down_shexp.weight"]
        else:
            sd[ff + "gate_proj.weight"] = g[b + "ffn_gate.weight"]
            sd[ff + "up_proj.weight"] = g[b + "ffn_up.weight"]
            sd[ff + "down_proj.weight"] = g[b + "ffn_down.weight"]
    return {k: v.contiguous() for k, v in sd.items()}


def converter_keeps_f32(name: str, arr: np.ndarray) -> bool:
    """The converter's rule (conversion/base.py prepare_tensors) as it applies to llama4: 1-D
    tensors, *_norm.weight and ffn_gate_inp stay F32 whatever --outtype says."""
    return arr.ndim <= 1 or name.endswith("_norm.weight") or name.endswith("ffn_gate_inp.weight")


def simulate_q8_0(sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """HF state dict -> what model-q8_0.gguf dequantizes to, mapped back to HF (no converter run).
    Used by the seed search; the real file is checked against it bit for bit."""
    g = hf_to_gguf(sd, cfg)
    q = {}
    for k, v in g.items():
        if converter_keeps_f32(k, v):
            q[k] = v
        else:
            q[k] = gguf.quants.dequantize(gguf.quants.quantize(v, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    return gguf_to_hf(q, cfg)


def llama3_rope_factors(cfg) -> torch.Tensor:
    """inv_freq(default) / inv_freq(llama3) per rope pair, from transformers' own rope code: what
    the rope_freqs tensor must hold for llama.cpp (theta_i = pos * base^(-2i/d) / rope_freqs[i])."""
    scaled = Llama4ForCausalLM(build_config()).model.rotary_emb.inv_freq
    d = cfg.head_dim
    plain = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    return plain / scaled, plain


# --------------------------------------------------------------------------------------------
# Reference computation


class RouterTap:
    """Collects every router-logit tensor the model computes (all MoE layers, all calls)."""

    def __init__(self, lm):
        self.rows: list[torch.Tensor] = []
        self.k = lm.config.num_experts_per_tok
        self.handles = [l.feed_forward.router.register_forward_hook(self._hook) for l in lm.model.layers if l.is_moe_layer]

    def _hook(self, _m, _i, output):
        self.rows.append(output[1].detach().reshape(-1, output[1].shape[-1]).clone())

    def gaps(self) -> torch.Tensor:
        r = torch.cat(self.rows).sort(dim=-1, descending=True).values
        return r[:, self.k - 1] - r[:, self.k]

    def close(self):
        for h in self.handles:
            h.remove()


def top2_gap(logits: torch.Tensor) -> float:
    v = logits.topk(2, dim=-1).values
    return float((v[..., 0] - v[..., 1]).min())


@torch.no_grad()
def full_logits(lm, ids: torch.Tensor) -> torch.Tensor:
    return lm(input_ids=ids[None], use_cache=False).logits[0].float()


@torch.no_grad()
def greedy(lm, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill the prompt into a fresh cache in one call, then 16 argmax tokens (no eos stop)."""
    cache = DynamicCache(config=lm.config)
    out = lm(input_ids=ids[None], cache=cache, use_cache=True)
    cache, logits = out.cache, out.logits[0, -1].float()
    toks, rows = [], []
    for s in range(GREEDY_TOKENS):
        tok = int(logits.argmax())
        toks.append(tok)
        rows.append(logits)
        if s + 1 == GREEDY_TOKENS:
            break
        out = lm(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[len(ids) + s]]), cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[0, -1].float()
    return torch.tensor(toks, dtype=torch.int64), torch.stack(rows)


@torch.no_grad()
def compute_reference(lm, long_ids: torch.Tensor, short: list[torch.Tensor], prefix: str, final: bool) -> tuple[dict, dict]:
    """Tensors (names prefixed by `prefix`) and margins. `final` adds the cache-free cross-check of
    the greedy rows (one more full pass over prompt + greedy tokens per prompt)."""
    t, st = {}, {}
    tap = RouterTap(lm)
    try:
        t0 = time.perf_counter()
        full = full_logits(lm, long_ids)
        long_gaps = tap.gaps().reshape(len(lm.config.moe_layers), LONG_LEN)
        tap.rows.clear()
        long_pass_s = round(time.perf_counter() - t0, 1)
        toks, glog = greedy(lm, long_ids)
        greedy_router = float(tap.gaps().min())
        tap.rows.clear()
        t[prefix + "long.ids"] = long_ids.contiguous()
        t[prefix + "long.rows"] = torch.tensor(LONG_ROWS, dtype=torch.int64)
        t[prefix + "long.logits"] = full[LONG_ROWS].contiguous()
        t[prefix + "long.argmax"] = full[LONG_ROWS].argmax(-1).contiguous()
        t[prefix + "long.greedy"] = toks
        t[prefix + "long.greedy_logits"] = glog.contiguous()
        pos_gap = long_gaps.amin(dim=0)
        st["long_row_gap"] = top2_gap(full[LONG_ROWS])
        st["long_greedy_gap"] = top2_gap(glog)
        st["long_router_gap"] = float(pos_gap.min())
        st["long_router_below"] = int((long_gaps < MIN_ROUTER_GAP).sum())
        st["long_router_below_positions"] = (pos_gap < MIN_ROUTER_GAP).nonzero().flatten().tolist()
        prefix_min = torch.cummin(pos_gap, dim=0).values
        st["long_row_min_router_gap"] = [float(prefix_min[r]) for r in LONG_ROWS]
        st["greedy_router_gap"] = greedy_router
        st["_long_full_pass_s"] = long_pass_s
        st["_full"] = full
        short_gaps, short_router = [], []
        for i, ids in enumerate(short):
            logits = full_logits(lm, ids)
            short_router.append(float(tap.gaps().min()))
            tap.rows.clear()
            stoks, sglog = greedy(lm, ids)
            short_router.append(float(tap.gaps().min()))
            tap.rows.clear()
            t[f"{prefix}short.{i}.ids"] = ids.contiguous()
            t[f"{prefix}short.{i}.logits"] = logits.contiguous()
            t[f"{prefix}short.{i}.greedy"] = stoks
            t[f"{prefix}short.{i}.greedy_logits"] = sglog.contiguous()
            short_gaps += [top2_gap(logits), top2_gap(sglog)]
        st["short_gap"] = min(short_gaps)
        st["short_router_gap"] = min(short_router)
        st["min_logit_gap"] = min(st["long_row_gap"], st["long_greedy_gap"], st["short_gap"])
        st["min_router_gap"] = min(st["long_router_gap"], greedy_router, st["short_router_gap"])
    finally:
        tap.close()
    if final:
        diffs = []
        for key, ids in [("long", long_ids)] + [(f"short.{i}", s) for i, s in enumerate(short)]:
            toks = t[f"{prefix}{key}.greedy"]
            ext = full_logits(lm, torch.cat([ids, toks[:-1]]))[len(ids) - 1 :]
            diffs.append(float((ext - t[f"{prefix}{key}.greedy_logits"]).abs().max()))
        st["max_greedy_vs_full"] = max(diffs)
        print(f"  {prefix or 'bf16.'} greedy rows (cache) vs full pass over prompt+greedy: max|Δ| per prompt {['%.1e' % d for d in diffs]}")
        assert max(diffs) < 1e-4, "cache path disagrees with the full pass"
    return t, st


def margins_ok(st: dict) -> bool:
    return st["min_logit_gap"] >= MIN_LOGIT_GAP and st["min_router_gap"] >= MIN_ROUTER_GAP


def describe_margins(label: str, st: dict) -> str:
    return (
        f"{label}: logit gap rows {st['long_row_gap']:.2e} greedy {st['long_greedy_gap']:.2e} short {st['short_gap']:.2e}; "
        f"router gap long {st['long_router_gap']:.2e} ({st['long_router_below']} decisions < {MIN_ROUTER_GAP:g}) "
        f"greedy {st['greedy_router_gap']:.2e} short {st['short_router_gap']:.2e}"
    )


@torch.no_grad()
def long_router_gap(lm, long_ids) -> float:
    """Smallest top-1/top-2 router gap over the long prompt's full pass (every MoE layer, every
    position): the criterion most seeds fail, so the search checks it first."""
    tap = RouterTap(lm)
    try:
        full_logits(lm, long_ids)
        return float(tap.gaps().min())
    finally:
        tap.close()


def search_seed(long_ids, short) -> tuple[int, list]:
    """First seed in range(SEED_TRIES) whose bf16 and simulated Q8_0 models meet every margin.
    A seed is dropped as soon as one model's long-prompt router gap is below the margin (one full
    pass, ~5 s), before the full check; that is one of the full check's criteria, so the result
    is the same as checking everything for every seed."""
    tried = []
    for seed in range(SEED_TRIES):
        t0 = time.perf_counter()
        model = build_model(seed)
        g = long_router_gap(model, long_ids)
        if g < MIN_ROUTER_GAP:
            tried.append({"seed": seed, "bf16_long_router_gap": g})
            print(f"  seed {seed}  [{time.perf_counter() - t0:.0f} s]  bf16 long-prompt router gap {g:.2e} < {MIN_ROUTER_GAP:g}", flush=True)
            continue
        q = model_from_state(simulate_q8_0(model.state_dict(), model.config))
        gq = long_router_gap(q, long_ids)
        if gq < MIN_ROUTER_GAP:
            tried.append({"seed": seed, "bf16_long_router_gap": g, "q8_0_long_router_gap": gq})
            print(f"  seed {seed}  [{time.perf_counter() - t0:.0f} s]  bf16 long-prompt router gap {g:.2e} ok; "
                  f"q8_0 {gq:.2e} < {MIN_ROUTER_GAP:g}", flush=True)
            continue
        _, a = compute_reference(model, long_ids, short, "", final=False)
        _, b = compute_reference(q, long_ids, short, "q8_0.", final=False)
        ok = margins_ok(a) and margins_ok(b)
        tried.append({"seed": seed, "logit_gap": min(a["min_logit_gap"], b["min_logit_gap"]),
                      "router_gap": min(a["min_router_gap"], b["min_router_gap"])})
        print(f"  seed {seed}  [{time.perf_counter() - t0:.0f} s]" + ("  <- ok" if ok else ""))
        print("    " + describe_margins("bf16", a))
        print("    " + describe_margins("q8_0", b), flush=True)
        if ok:
            return seed, tried
    good = [m for m in tried if m.get("logit_gap", 0) >= MIN_LOGIT_GAP]
    if not good:
        raise SystemExit(f"no seed in range({SEED_TRIES}) meets the margins; raise SEED_TRIES")
    best = max(good, key=lambda m: m["router_gap"])
    print(f"  no seed meets the router margin; best is seed {best['seed']} (router gap {best['router_gap']:.2e})")
    return best["seed"], tried


# --------------------------------------------------------------------------------------------
# GGUF reading and layout


def field_value(f):
    """(type string, python value) of a ReaderField."""
    vt = f.types[0]
    if vt == gguf.GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        items = [f.parts[i] for i in f.data]
        if sub == gguf.GGUFValueType.STRING:
            vals = [bytes(x).decode("utf-8", errors="backslashreplace") for x in items]
        else:
            vals = [x.tolist()[0] if hasattr(x, "tolist") else x for x in items]
        return f"ARRAY[{sub.name if sub is not None else '?'}]", vals
    part = f.parts[f.data[0]]
    if vt == gguf.GGUFValueType.STRING:
        return "STRING", bytes(part).decode("utf-8", errors="backslashreplace")
    return vt.name, part.tolist()[0]


def read_gguf(path: Path):
    r = gguf.GGUFReader(path)
    kv = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        kv[name] = field_value(f)
    return r, kv


def layout_text(path: Path) -> str:
    r, kv = read_gguf(path)
    raw = path.read_bytes()[:24]
    lines = [f"=== {path.name}  ({path.stat().st_size} bytes)"]
    lines.append(f"header: magic {raw[:4]!r}, version {int.from_bytes(raw[4:8], 'little')}, "
                 f"tensor_count {int.from_bytes(raw[8:16], 'little')}, kv_count {int.from_bytes(raw[16:24], 'little')} (little-endian)")
    lines.append(f"alignment {r.alignment} ({'general.alignment' if 'general.alignment' in kv else 'default, no general.alignment key'}), "
                 f"tensor data section starts at file offset {r.data_offset}")
    lines.append("")
    lines.append("metadata (key  type  value; arrays: element type, length, first 5 items):")
    for k, (ty, v) in kv.items():
        if isinstance(v, list):
            lines.append(f"  {k}  {ty}  len={len(v)}  {v[:5]!r}")
        elif isinstance(v, str) and len(v) > 120:
            h = hashlib.sha256(v.encode()).hexdigest()[:16]
            lines.append(f"  {k}  {ty}  len={len(v)}  sha256[:16]={h}  {v[:60]!r}...")
        else:
            lines.append(f"  {k}  {ty}  {v!r}")
    tt = kv.get("tokenizer.ggml.token_type")
    if tt:
        toks = kv["tokenizer.ggml.tokens"][1]
        counts = {v: tt[1].count(v) for v in sorted(set(tt[1]))}
        lines.append(f"  (tokenizer.ggml.token_type counts: {counts}; ids with type != 1: "
                     + ", ".join(f"{i}={toks[i]!r}:{v}" for i, v in enumerate(tt[1]) if v != 1) + ")")
    lines.append("")
    lines.append("tensors (name  ggml type  ne (ne0,ne1,...)  offset in data section  absolute file offset  nbytes):")
    for t in r.tensors:
        rel = int(t.field.parts[-1][0])
        assert rel == t.data_offset - r.data_offset
        ne = ",".join(str(int(x)) for x in t.shape)
        lines.append(f"  {t.name:28s} {t.tensor_type.name:5s} [{ne}]  {rel}  {t.data_offset}  {t.n_bytes}")
    return "\n".join(lines) + "\n"


def check_offsets(path: Path):
    """GGUF offsets: each tensor's offset = previous offset + nbytes padded to the alignment (what
    ggml/src/gguf.cpp requires), data section start padded to the alignment; the file ends at the
    last tensor's padded end."""
    r, _ = read_gguf(path)
    expect = 0
    for t in r.tensors:
        rel = int(t.field.parts[-1][0])
        assert rel == expect, f"{path.name}: {t.name} offset {rel}, expected {expect}"
        assert rel % r.alignment == 0
        expect += (t.n_bytes + r.alignment - 1) // r.alignment * r.alignment
    assert r.data_offset % r.alignment == 0
    size = path.stat().st_size
    print(f"  {path.name}: {len(r.tensors)} tensors, offsets = running sum of nbytes padded to {r.alignment}; "
          f"data section at {r.data_offset}, ends at {r.data_offset + expect} (file size {size})")


def gguf_tensors_f32(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    r, _ = read_gguf(path)
    out, types = {}, {}
    for t in r.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        expect = tuple(reversed([int(x) for x in t.shape]))
        assert arr.shape == expect, (t.name, arr.shape, expect)
        out[t.name] = np.array(arr, dtype=np.float32)
        types[t.name] = t.tensor_type.name
    return out, types


# --------------------------------------------------------------------------------------------
# Sanity checks of the knobs llama.cpp hard-codes


@torch.no_grad()
def variant(lm, **overrides):
    cfg_dict = lm.config.to_dict()
    cfg_dict.update(overrides)
    cfg_dict.pop("layer_types", None)
    cfg = Llama4TextConfig(**cfg_dict)
    cfg._attn_implementation = "sdpa"
    other = Llama4ForCausalLM(cfg).eval()
    other.load_state_dict(lm.state_dict(), strict=True)
    return other


@torch.no_grad()
def sanity(lm, long_ids, full: torch.Tensor) -> dict:
    print("\n--- sanity (bf16 model, long prompt, max|Δlogit| per stored row; same weights, one knob changed)")
    base = full[LONG_ROWS]
    out = {}
    t0 = time.perf_counter()
    eager = model_from_state(lm.state_dict(), impl="eager")
    e = full_logits(eager, long_ids)
    d = float((e - full).abs().max())
    out["sdpa_vs_eager_all_positions"] = d
    print(f"  sdpa vs eager, all {LONG_LEN} positions: max|Δlogit| {d:.2e}  [{time.perf_counter() - t0:.0f} s]")
    assert d < 5e-5
    del eager, e
    c, fs = lm.config.attention_chunk_size, lm.config.floor_scale
    rp = lm.config.rope_parameters
    variants = {
        "temperature_tuning_off": (dict(attn_temperature_tuning=False), fs - 1),
        "chunking_off": (dict(attention_chunk_size=None), c),
        "rope_scaling_off": (dict(rope_parameters={"rope_type": "default", "rope_theta": rp["rope_theta"]}), 1),
        # position 0 attends to itself only (output = v whatever q and k are)
        "qk_norm_off": (dict(use_qk_norm=False), 1),
    }
    for label, (ov, first) in variants.items():
        t0 = time.perf_counter()
        other = full_logits(variant(lm, **ov), long_ids)[LONG_ROWS]
        diff = (other - base).abs().amax(dim=-1).tolist()
        out[label] = {str(r): x for r, x in zip(LONG_ROWS, diff)}
        print(f"  {label} (changes from pos {first}) [{time.perf_counter() - t0:.0f} s]:")
        print("    " + " ".join(f"{r}:{x:.1e}" for r, x in zip(LONG_ROWS, diff)))
        before = [x for r, x in zip(LONG_ROWS, diff) if r < first]
        after = [x for r, x in zip(LONG_ROWS, diff) if r >= first]
        assert not before or max(before) < 1e-5, f"{label}: rows < {first} changed"
        assert min(after) > 1e-4 or label == "rope_scaling_off", f"{label}: rows >= {first} did not change"
        if label == "rope_scaling_off":
            assert max(after) > 1e-3
    return out


# --------------------------------------------------------------------------------------------


def tensor_table(types_by_file: dict[str, dict[str, str]]) -> list[dict]:
    """One row per GGUF tensor kind: how it maps to HF."""
    m = {
        "token_embd.weight": "model.embed_tokens.weight [V,H] as is (ne = [H, V])",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight [V,H] as is (ne = [H, V])",
        "rope_freqs.weight": "generated: per-pair divisor of the default inverse frequency (llama3 rope); no HF tensor",
        "blk.N.attn_norm.weight": "model.layers.N.input_layernorm.weight",
        "blk.N.attn_q.weight": "self_attn.q_proj.weight [nh*hd, H] as is, NOT permuted (ne = [H, nh*hd])",
        "blk.N.attn_k.weight": "self_attn.k_proj.weight [nkv*hd, H] as is, NOT permuted",
        "blk.N.attn_v.weight": "self_attn.v_proj.weight as is",
        "blk.N.attn_output.weight": "self_attn.o_proj.weight [H, nh*hd] as is (ne = [nh*hd, H])",
        "blk.N.ffn_norm.weight": "model.layers.N.post_attention_layernorm.weight",
        "blk.N.ffn_gate.weight": "dense layer feed_forward.gate_proj.weight [F_mlp, H] as is",
        "blk.N.ffn_up.weight": "dense layer feed_forward.up_proj.weight as is",
        "blk.N.ffn_down.weight": "dense layer feed_forward.down_proj.weight [H, F_mlp] as is",
        "blk.N.ffn_gate_inp.weight": "feed_forward.router.weight [E, H] as is (ne = [H, E])",
        "blk.N.ffn_gate_exps.weight": "feed_forward.experts.gate_up_proj [E, H, 2F]: [..., :F] transposed to [E, F, H] (ne = [H, F, E])",
        "blk.N.ffn_up_exps.weight": "feed_forward.experts.gate_up_proj [E, H, 2F]: [..., F:] transposed to [E, F, H] (ne = [H, F, E])",
        "blk.N.ffn_down_exps.weight": "feed_forward.experts.down_proj [E, F, H] transposed to [E, H, F] (ne = [F, H, E])",
        "blk.N.ffn_gate_shexp.weight": "feed_forward.shared_expert.gate_proj.weight as is",
        "blk.N.ffn_up_shexp.weight": "feed_forward.shared_expert.up_proj.weight as is",
        "blk.N.ffn_down_shexp.weight": "feed_forward.shared_expert.down_proj.weight as is",
    }
    rows = []
    for kind, hf in m.items():
        r = {"gguf": kind, "hf": hf}
        for fname, types in types_by_file.items():
            names = [n for n in types if (n == kind if "N" not in kind else n.startswith("blk.") and n.split(".", 2)[2] == kind.split(".", 2)[2])]
            r[fname] = sorted({types[n] for n in names})
        rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", type=Path, default=Path(os.environ.get("HERD_LLAMA_CPP", DEFAULT_LLAMA_CPP)),
                    help=f"llama.cpp tree with convert_hf_to_gguf.py and gguf-py (default {DEFAULT_LLAMA_CPP})")
    ap.add_argument("--search-seed", action="store_true", help=f"re-run the weights-seed search over range({SEED_TRIES})")
    ap.add_argument("--no-sanity", action="store_true", help="skip the knob checks (saves ~2 min)")
    ap.add_argument("--llama-quantize", type=Path, default=os.environ.get("LLAMA_QUANTIZE") or None,
                    help="llama.cpp's llama-quantize binary (default: $LLAMA_QUANTIZE); without it the Q4_K_M / Q6_K step is skipped")
    ap.add_argument("--k-quants", default=",".join(K_QUANTS),
                    help=f"which llama-quantize files to write (comma-separated subset of {','.join(K_QUANTS)}; default all). "
                         "Each adds its GGUF (~2.3 / ~3.2 MB) and its references")
    args = ap.parse_args()
    wanted = [t for t in args.k_quants.split(",") if t]
    if not set(wanted) <= set(K_QUANTS):
        raise SystemExit(f"--k-quants: {sorted(set(wanted) - set(K_QUANTS))} not in {list(K_QUANTS)}")
    setup_llama_cpp(args.llama_cpp)
    quantize_exe = None
    if args.llama_quantize is not None:
        quantize_exe = args.llama_quantize.resolve()
        if not (quantize_exe.is_file() and os.access(quantize_exe, os.X_OK)):
            raise SystemExit(f"LLAMA_QUANTIZE / --llama-quantize: {quantize_exe} is not an executable file")
        print(f"llama-quantize: {quantize_exe}")
    else:
        print("llama-quantize: not given -> the K-quant step (model-q4_k_m.gguf, model-q6_k.gguf, q4_k_m.* / q6_k.* references) "
              "will be SKIPPED; set LLAMA_QUANTIZE=/path/to/llama-quantize (README, gguf-tiny) to include it")
    print(f"versions: {VERSIONS}, python {sys.version.split()[0]}")
    timings = {}
    t_all = time.perf_counter()
    cfg = build_config()
    print(f"moe_layers {cfg.moe_layers}, no_rope_layers {cfg.no_rope_layers}, layer_types {cfg.layer_types}")
    assert cfg.moe_layers == [1, 3] and cfg.no_rope_layers == [1, 1, 1, 0]

    long_ids, short = make_prompts()
    print(f"prompts: long {LONG_LEN} (seed {PROMPT_SEED}), short {SHORT_LENS}; ids drawn from [0, {N_NORMAL})")

    # ---- seed
    t0 = time.perf_counter()
    if args.search_seed or WEIGHTS_SEED is None:
        print(f"\n--- seed search (bf16 model and simulated Q8_0 model, margins: logit gap >= {MIN_LOGIT_GAP:g}, router gap >= {MIN_ROUTER_GAP:g})")
        seed, tried = search_seed(long_ids, short)
        timings["seed_search_s"] = round(time.perf_counter() - t0, 1)
    else:
        seed, tried = WEIGHTS_SEED, None
        print(f"\nweights seed {seed} (pinned; --search-seed re-runs the search)")
    cand = build_model(seed)
    cand_sd = {k: v.clone() for k, v in cand.state_dict().items()}

    # ---- HF checkpoint
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    save_model = build_model(seed)
    with torch.no_grad():
        for p in save_model.parameters():
            p.data = p.data.to(torch.bfloat16)
    save_model.save_pretrained(OUT)
    del save_model
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_SRC / f, OUT / f)
    lm, info = Llama4ForCausalLM.from_pretrained(OUT, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, bad
    with torch.no_grad():
        for p in lm.parameters():
            p.data = p.data.clone()  # aligned memory, see make_fixtures.py pitfall 5
    lm.eval()
    for k, v in lm.state_dict().items():
        assert torch.equal(v, cand_sd[k]), f"{k} changed after save/reload"
    print("\nHF checkpoint saved (bf16) and reloaded (f32): every tensor equals the in-memory candidate")
    from safetensors import safe_open

    with safe_open(OUT / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}, dtypes

    # ---- conversions
    commands = {}
    t0 = time.perf_counter()
    for outtype in ("bf16", "q8_0"):
        commands[outtype] = run_converter(outtype)
    timings["convert_s"] = round(time.perf_counter() - t0, 1)
    quantize_commands, k_tags = {}, []
    if quantize_exe is not None:
        t1 = time.perf_counter()
        for tag in [t for t in K_QUANTS if t in wanted]:
            quantize_commands[tag], VERSIONS["llama_quantize"] = run_llama_quantize(quantize_exe, tag)
            k_tags.append(tag)
        timings["llama_quantize_s"] = round(time.perf_counter() - t1, 1)
    else:
        print("\n--- K-quant step SKIPPED (no LLAMA_QUANTIZE): model-q4_k_m.gguf, model-q6_k.gguf and the q4_k_m.* / q6_k.* "
              "references are not written")
    t0 = time.perf_counter()
    n_params = sum(v.numel() for v in cand_sd.values())
    so_far = sum(f.stat().st_size for f in OUT.iterdir())
    f32_est = n_params * 4 + 300_000
    if so_far + f32_est + 1_000_000 <= MAX_FIXTURE_BYTES:
        commands["f32"] = run_converter("f32")
    else:
        print(f"\nmodel-f32.gguf skipped: ~{f32_est / 1e6:.1f} MB on top of {so_far / 1e6:.1f} MB would pass {MAX_FIXTURE_BYTES / 1e6:.0f} MB")
    if "f32" in commands:
        timings["convert_f32_s"] = round(time.perf_counter() - t0, 1)
    ggufs = [OUT / f"model-{t}.gguf" for t in ("bf16", "q8_0", *k_tags, "f32") if (OUT / f"model-{t}.gguf").exists()]

    # ---- layout + round trips
    print("\n--- GGUF files")
    for p in ggufs:
        check_offsets(p)
    (OUT / "gguf_layout.txt").write_text(
        f"# Generated by {GENERATOR} (fixture_version {FIXTURE_VERSION}); llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, "
        f"gguf-py {VERSIONS['gguf_py']}.\n"
        + (f"# {', '.join(f'model-{t}.gguf' for t in k_tags)}: llama-quantize {VERSIONS['llama_quantize']}, from model-bf16.gguf.\n" if k_tags else
           "# K-quant step skipped (no LLAMA_QUANTIZE): no model-q4_k_m.gguf / model-q6_k.gguf.\n")
        + "# ne = ggml dims (ne0 fastest). Offsets: relative to the tensor data section, then absolute.\n\n"
        + "\n".join(layout_text(p) for p in ggufs)
    )
    print((OUT / "gguf_layout.txt").read_text())

    rope_factors, plain = llama3_rope_factors(cfg)
    types_by_file = {}
    hf_gguf = hf_to_gguf(cand_sd, cfg)
    k_states, k_roundtrip = {}, {}
    for p in ggufs:
        tens, types = gguf_tensors_f32(p)
        types_by_file[p.name] = types
        assert set(tens) == set(hf_gguf) | {"rope_freqs.weight"}, set(tens) ^ set(hf_gguf)
        assert types["rope_freqs.weight"] == "F32"
        assert torch.equal(torch.from_numpy(tens["rope_freqs.weight"]), rope_factors.float()), (tens["rope_freqs.weight"], rope_factors)
        back = gguf_to_hf({k: v for k, v in tens.items() if k != "rope_freqs.weight"}, cfg)
        if "q8_0" in p.name:
            sim = simulate_q8_0(cand_sd, cfg)
            for k, v in back.items():
                assert torch.equal(v, sim[k]), f"{p.name}: {k} differs from gguf.quants Q8_0 of the HF tensor"
            q8_state = back
            err = max(float((back[k] - cand_sd[k]).abs().max() / cand_sd[k].abs().max()) for k in back)
            print(f"  {p.name}: dequantized tensors mapped back to HF == Q8_0 round trip of the bf16 weights, bit for bit "
                  f"(max |Δ|/max|w| {err:.2e})")
        elif p.stem.removeprefix("model-") in K_QUANTS:
            tag = p.stem.removeprefix("model-")
            # llama-quantize keeps 1-D tensors and ffn_gate_inp in F32 (as the converter did): those are
            # copied bit for bit; every other tensor is quantized (type per llama.cpp's Q*_K_M rules).
            for k, v in hf_gguf.items():
                if converter_keeps_f32(k, v):
                    assert types[k] == "F32" and np.array_equal(tens[k], v), f"{p.name}: {k} not the F32 original"
                else:
                    assert types[k] not in ("F32", "F16", "BF16"), f"{p.name}: {k} left as {types[k]}"
            rel = {k: float((back[k] - cand_sd[k]).abs().max() / cand_sd[k].abs().max()) for k in back}
            k_states[tag] = back
            counts = {t: sum(1 for n in types if types[n] == t) for t in sorted(set(types.values()))}
            k_roundtrip[tag] = {"types": counts, "max_rel_err": max(rel.values()),
                                "max_rel_err_tensor": max(rel, key=rel.get)}
            print(f"  {p.name}: tensors {counts}; F32 ones == the originals; dequantized (gguf.quants.dequantize) and mapped back "
                  f"to HF: max |Δ|/max|w| {max(rel.values()):.2e} ({max(rel, key=rel.get)})")
        else:
            for k, v in back.items():
                assert torch.equal(v, cand_sd[k]), f"{p.name}: {k} != original weights"
            print(f"  {p.name}: every tensor mapped back to HF == the original bf16 weights, bit for bit")
    which = [i for i, f in enumerate(rope_factors.tolist()) if f != 1.0]
    wl = [2 * math.pi / float(x) for x in plain]
    print(f"  rope_freqs (F32, [{cfg.head_dim // 2}]) == inv_freq(default)/inv_freq(llama3 of transformers): 1 for pairs "
          f"0..{which[0] - 1} (wavelength <= {wl[which[0] - 1]:.0f}), 16 for pairs {which[0]}..{which[-1]} (wavelength >= {wl[which[0]]:.0f})")
    table = tensor_table(types_by_file)
    print("\n--- tensor kinds: ggml type per file, HF source")
    for r in table:
        print(f"  {r['gguf']:28s} " + " ".join(f"{k.split('-')[1].split('.')[0]}={'/'.join(v)}" for k, v in r.items() if k.endswith(".gguf"))
              + f"   <- {r['hf']}")

    # ---- references
    print("\n--- reference (bf16 weights upcast to f32, sdpa attention, float32)")
    t0 = time.perf_counter()
    tensors, st = compute_reference(lm, long_ids, short, "", final=True)
    timings["reference_bf16_s"] = round(time.perf_counter() - t0, 1)
    cand_t, _ = compute_reference(cand, long_ids, short, "", final=False)
    for k, v in cand_t.items():
        assert torch.equal(v, tensors[k]), f"{k}: reloaded checkpoint != in-memory candidate"
    print("  reference from the reloaded checkpoint == in-memory candidate, bit for bit")
    print("  " + describe_margins("bf16", st))
    # Quantized models: Q8_0 (the converter's) and, if the K-quant step ran, llama-quantize's Q4_K_M and Q6_K.
    # Each is every tensor of its file dequantized with gguf.quants.dequantize, mapped back to HF, f32 compute.
    qstates = {"q8_0": q8_state, **{tag: k_states[tag] for tag in k_tags}}
    qmodels, qstats, vs_bf16 = {}, {}, {}
    for tag, state in qstates.items():
        t0 = time.perf_counter()
        qmodels[tag] = model_from_state(state)
        qt, qstats[tag] = compute_reference(qmodels[tag], long_ids, short, f"{tag}.", final=True)
        timings[f"reference_{tag}_s"] = round(time.perf_counter() - t0, 1)
        print("  " + describe_margins(tag, qstats[tag]) + ("" if margins_ok(qstats[tag]) else
              f"   [below the margins (logit {MIN_LOGIT_GAP:g}, router {MIN_ROUTER_GAP:g})"
              + ("; not part of the seed search, recorded as is]" if tag in K_QUANTS else "]")))
        tensors.update({k: v for k, v in qt.items() if not k.endswith((".ids", ".rows"))})  # same prompts
        q_vs_b = float((qstats[tag]["_full"][LONG_ROWS] - st["_full"][LONG_ROWS]).abs().max())
        same_argmax = int((qt[f"{tag}.long.argmax"] == tensors["long.argmax"]).sum())
        same_greedy = int((qt[f"{tag}.long.greedy"] == tensors["long.greedy"]).sum())
        vs_bf16[tag] = {"long_rows_max_abs_logit_diff": q_vs_b, "same_argmax_rows": same_argmax, "same_greedy_tokens": same_greedy}
        print(f"  {tag} vs bf16 reference: long rows max|Δlogit| {q_vs_b:.2e}, same argmax on {same_argmax}/{len(LONG_ROWS)} rows, "
              f"same greedy tokens {same_greedy}/{GREEDY_TOKENS}")
    # sdpa vs eager on the short prompts and the first EAGER_CHECK_LEN tokens, every model
    sdpa_eager = {}
    for label, model in (("bf16", lm), *qmodels.items()):
        em = model_from_state(model.state_dict(), impl="eager")
        d = max(float((full_logits(em, x) - full_logits(model, x)).abs().max()) for x in short + [long_ids[:EAGER_CHECK_LEN]])
        sdpa_eager[label] = d
        print(f"  {label}: sdpa vs eager on the short prompts and the first {EAGER_CHECK_LEN} long-prompt tokens: max|Δlogit| {d:.2e}")
        assert d < 5e-5
    for label, s in (("bf16", st), ("q8_0", qstats["q8_0"])):
        assert s["min_logit_gap"] >= MIN_LOGIT_GAP, f"{label}: logit margins lost"
    print(f"  long greedy (bf16): {tensors['long.greedy'].tolist()}")
    for tag in qstates:
        print(f"  long greedy ({tag}): {tensors[f'{tag}.long.greedy'].tolist()}")

    sanity_info = None if args.no_sanity else sanity(lm, long_ids, st["_full"])
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "reference.safetensors", metadata={"format": "pt"})

    def margins(s):
        return {k: v for k, v in s.items() if not k.startswith("_")}

    timings["long_full_pass_s"] = {"bf16": st["_long_full_pass_s"], **{t: qstats[t]["_long_full_pass_s"] for t in qstates}}
    timings["total_s"] = round(time.perf_counter() - t_all, 1)
    timings["peak_rss_gb"] = round(peak_rss_gb(), 2)
    files = {f.name: f.stat().st_size for f in sorted(OUT.iterdir()) if f.name != "reference.json"}
    meta = {
        "fixture_version": FIXTURE_VERSION,
        "generator": GENERATOR,
        "versions": VERSIONS,
        "fixture": NAME,
        "weights_dtype": "bfloat16",
        "n_prompts": 0,  # no prompt.* tensors (the generic fixture format); see "tensors"
        "greedy_tokens": GREEDY_TOKENS,
        "weights_seed": seed,
        "prompt_seed": PROMPT_SEED,
        "long_prompt_len": LONG_LEN,
        "long_rows": LONG_ROWS,
        "short_prompt_lens": SHORT_LENS,
        "attention_chunk_size": TEXT["attention_chunk_size"],
        "floor_scale": TEXT["floor_scale"],
        "attn_implementation": "sdpa",
        "suppressed_lm_head_ids": SPECIALS,
        "tensors": {
            "long.ids": "int64 [8200] the long prompt (ids < 497)",
            "long.rows": "int64 [24] positions 0..7 and 8184..8199",
            "long.logits": "f32 [24, 512] full-pass logits (no cache) at long.rows",
            "long.argmax": "int64 [24] argmax of long.logits",
            "long.greedy": "int64 [16] greedy tokens: prompt prefilled into a fresh cache in one call, then 16 argmax steps, no eos stop",
            "long.greedy_logits": "f32 [16, 512] row s = logits whose argmax is greedy[s] (row 0 = last row of the cached prefill; equals long.logits[-1] up to ~1e-5)",
            "short.{i}.ids": "int64 [5] and [40]",
            "short.{i}.logits": "f32 [T, 512] full-pass logits, all rows",
            "short.{i}.greedy": "int64 [16]",
            "short.{i}.greedy_logits": "f32 [16, 512]",
            "q8_0.*": "the same tensors (except ids and rows, which are shared) computed from model-q8_0.gguf: every tensor dequantized with gguf.quants.dequantize "
                      "(F32 ones as stored), mapped back to HF names, f32 compute",
            **{k: v for k, v in {
                "q4_k_m.*": "the same as q8_0.* for model-q4_k_m.gguf (llama-quantize model-bf16.gguf ... Q4_K_M, no imatrix: Q4_K, with Q6_K where "
                            "llama.cpp's Q4_K_M rules give more bits: output.weight and attn_v / ffn_down* of some layers; see gguf_tensor_map); "
                            "margins recorded, not enforced (not part of the seed search)",
                "q6_k.*": "the same as q8_0.* for model-q6_k.gguf (llama-quantize model-bf16.gguf ... Q6_K: every quantized tensor Q6_K); "
                          "margins recorded, not enforced (not part of the seed search)",
            }.items() if k[:-2] in k_tags},
        },
        "k_quants": ({"files": {t: f"model-{t}.gguf" for t in k_tags}, "llama_quantize": VERSIONS["llama_quantize"],
                      "round_trip": k_roundtrip} if k_tags else
                     "skipped (no LLAMA_QUANTIZE): no model-q4_k_m.gguf / model-q6_k.gguf and no q4_k_m.* / q6_k.* tensors"),
        "margins": {"bf16": margins(st), **{t: margins(qstats[t]) for t in qstates}, "logit_margin": MIN_LOGIT_GAP,
                    "router_margin": MIN_ROUTER_GAP, "enforced_for": ["bf16", "q8_0"]},
        **{f"{t}_vs_bf16": vs_bf16[t] for t in qstates},
        "sdpa_vs_eager": {**sdpa_eager, "checked_on": f"short prompts + first {EAGER_CHECK_LEN} long tokens"},
        "seed_search": tried,
        "sanity": sanity_info,
        "rope_freqs": rope_factors.tolist(),
        "gguf_tensor_map": table,
        "commands": {
            "regenerate": (f"LLAMA_QUANTIZE=/work/llama-build/build/bin/llama-quantize " if k_tags else "") + f"/work/refenv/bin/python {GENERATOR}",
            "convert": commands,
            **({"quantize": quantize_commands, "quantize_build": LLAMA_QUANTIZE_BUILD} if k_tags else {}),
            "convert_note": "run by this script in a subprocess with get_vocab_base_pre patched to answer 'llama4' for the unknown hash",
            "sdist": f"pip download --no-binary llama-cpp-python --no-deps llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} "
                     f"(sha256 {LLAMA_CPP_PYTHON_SHA256})",
        },
        "files": files,
        "timings": timings,  # differs between runs
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\n--- {NAME}/config.json")
    print((OUT / "config.json").read_text())
    print(f"--- {NAME} files")
    files["reference.json"] = (OUT / "reference.json").stat().st_size
    for k, v in files.items():
        print(f"  {k:28s} {v:>10d}")
    print(f"  total {sum(files.values()) / 1e6:.2f} MB; timings {timings}")


if __name__ == "__main__":
    main()
