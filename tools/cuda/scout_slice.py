"""A Scout-shaped slice on the GPU, made and timed in transformers: the other half of
tools/cuda/check.sh's side-by-side benchmark.

    python3 tools/cuda/scout_slice.py make DIR [--layers 4]   # random bf16 weights → DIR
    python3 tools/cuda/scout_slice.py bench DIR [--gen 64 --prompt 2048]

`make` builds Llama4ForCausalLM at Llama 4 Scout's full width (hidden 5120, 40 heads / 8 KV
heads of 128, 16 experts of width 8192 plus the shared expert, top-1 sigmoid routing, vocab
202048, chunked RoPE attention with every 4th layer global NoPE) but only `--layers` of its 48
layers, with random weights, and saves it as a Hugging Face folder (bf16 safetensors) that
herd loads as it would the real checkpoint. `bench` times transformers on the same folder and
GPU: decode tokens/s at batch 1 (one token per forward with the KV cache, after a short
prompt), prefill tokens/s over a `--prompt`-token prompt, and the GPU's device-to-device copy
bandwidth (bytes read plus bytes written per second). It prints one JSON line.
"""

import argparse
import json
import time

import torch
from transformers import Llama4ForCausalLM, Llama4TextConfig


def scout_config(layers: int) -> Llama4TextConfig:
    return Llama4TextConfig(
        vocab_size=202048,
        hidden_size=5120,
        intermediate_size=8192,
        intermediate_size_mlp=16384,
        num_hidden_layers=layers,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=10485760,
        rms_norm_eps=1e-5,
        num_local_experts=16,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        use_qk_norm=True,
        attention_chunk_size=8192,
        no_rope_layer_interval=4,
        attn_temperature_tuning=True,
        floor_scale=8192,
        attn_scale=0.1,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 16.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=200000,
        eos_token_id=[200001, 200007, 200008],
        pad_token_id=200018,
        tie_word_embeddings=False,
    )


def make(out: str, layers: int):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Llama4ForCausalLM(scout_config(layers))
    model.save_pretrained(out, max_shard_size="5GB")
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"made": out, "layers": layers, "parameters": params}))


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    reps = 20
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * reps / (time.perf_counter() - start)


@torch.no_grad()
def bench(path: str, n_gen: int, n_prompt: int):
    model = Llama4ForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda").eval()
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)

    def ids(n):
        return torch.randint(0, vocab, (1, n), generator=gen).cuda()

    def decode(steps: int) -> float:
        out = model(ids(16), use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        token.item()  # the host sees each step's token, as a sampler would
        return steps / (time.perf_counter() - start)

    def prefill() -> float:
        prompt = ids(n_prompt)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(prompt, use_cache=True).logits[:, -1].float().cpu()
        return n_prompt / (time.perf_counter() - start)

    decode(4)  # warm-up
    tg = [decode(n_gen) for _ in range(3)]
    prefill()  # warm-up
    pp = [prefill() for _ in range(3)]
    print(
        json.dumps(
            {
                "bench": "transformers",
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(),
                "tg_tok_s": max(tg),
                "pp_tok_s": max(pp),
                "n_gen": n_gen,
                "n_prompt": n_prompt,
                "copy_bandwidth_bytes_s": copy_bandwidth(),
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["make", "bench"])
    p.add_argument("dir")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--prompt", type=int, default=2048)
    a = p.parse_args()
    if a.what == "make":
        make(a.dir, a.layers)
    else:
        bench(a.dir, a.gen, a.prompt)
