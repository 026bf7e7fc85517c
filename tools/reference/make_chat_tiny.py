#!/usr/bin/env python3
"""Build fixtures/chat-tiny/: a tiny random-weight Llama 4 checkpoint with a working tokenizer and
the real Llama 4 chat template, so `herd chat` / `herd generate --prompt` can be run and tested end
to end on the CPU.

Run from the repository root:

    /work/refenv/bin/python tools/reference/make_chat_tiny.py

What it writes (deletes and rewrites fixtures/chat-tiny/ only):
* tokenizer.json: byte-level BPE built with the `tokenizers` library. 256 byte tokens (id = byte
  value, GPT-2 byte-to-unicode alphabet), BPE_MERGES merges learned with BpeTrainer on the small
  corpus below, then the 15 Llama 4 special tokens as added special tokens. Normalizer,
  pre-tokenizer (Llama 4 split regex + ByteLevel(use_regex=False)), post-processor (ByteLevel +
  TemplateProcessing that prepends <|begin_of_text|>) and decoder are the same as in the real
  Llama 4 tokenizer.json (fixtures/tokenizer/tokenizer.json.gz); the script asserts it.
* tokenizer_config.json: bos/eos/pad tokens and the Llama 4 chat template (verbatim copy of
  fixtures/tokenizer/chat_template.jinja), inline.
* config.json / generation_config.json / model.safetensors: a Scout-like Llama4ForCausalLM with
  vocab = tokenizer size, saved with save_pretrained in float32.
* reference.safetensors / reference.json: the same tensors as make_fixtures.py (fixture_version 1)
  for 3 prompts rendered with the chat template, so herd's generic fixture tests run on it.
* chat_cases.json: the conversations, their rendered text and ids, the greedy tokens decoded, and
  the HF encoding of 20 assorted strings.

The model code paths (reference computation, reload, margins) are imported from make_fixtures.py
so the numbers are produced exactly the same way as for the other fixtures.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import unicodedata
from pathlib import Path

import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Llama4ForCausalLM, Llama4TextConfig, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also pins threads/determinism and silences transformers)

GENERATOR = "tools/reference/make_chat_tiny.py"
ROOT = mf.ROOT
OUT = ROOT / "fixtures" / "chat-tiny"
REAL_TOKENIZER = ROOT / "fixtures" / "tokenizer" / "tokenizer.json.gz"
CHAT_TEMPLATE_FILE = ROOT / "fixtures" / "tokenizer" / "chat_template.jinja"
MAX_TOTAL_BYTES = 1_500_000

BPE_MERGES = 241  # 256 bytes + 241 merges + 15 specials = 512
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|finetune_right_pad|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
]
BOS, EOS_INSTRUCT, PAD = "<|begin_of_text|>", "<|eot|>", "<|finetune_right_pad|>"
STOP_TOKENS = ["<|end_of_text|>", "<|eom|>", "<|eot|>"]  # generation stop list, LLAMA4.md §8
UNSUPPRESSED = {"<|eot|>"}  # keeps a normal lm_head row so a reply can end by itself

# Llama 4's pre-tokenizer regex (LLAMA4.md §8); asserted equal to the one in the real tokenizer.json.
SPLIT_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Small multilingual, English-heavy training corpus. The chat-template pieces (role names, "\n\n")
# and the demo sentences are repeated so that rendered prompts tokenise into few ids (the reference
# stores [T, V] logits per prompt, so prompt length is what sets the fixture size).
CHAT_LINES = [
    "user\n\nHello! Who are you?",
    "assistant\n\nHello! I am a helpful assistant. How can I help you today?",
    "system\n\nYou are a helpful assistant.",
    "user\n\nWhat is the capital of France?",
    "assistant\n\nThe capital of France is Paris.",
    "user\n\nSay hi in French.",
    "assistant\n\nBonjour !",
    "user\n\nMerci !",
    "ipython\n\n",
]
PROSE = [
    "The quick brown fox jumps over the lazy dog. The dog does not move; it is sleeping in the sun.",
    "Once upon a time there was a little girl who lived in a house near the forest with her mother.",
    "She liked to read books, to write stories and to walk in the garden when the weather was nice.",
    "In the morning the children went to school, and in the evening they played with their friends.",
    "I'll tell you what I think: it's the best thing we've ever done, and they're going to love it.",
    "We don't know where he is, but we'd like to find him before the end of the day.",
    "Please make sure that the information you give is correct and that you explain your reasoning.",
    "There are many ways to learn a new language: reading, listening, speaking and writing every day.",
    "The model reads the prompt, then it generates one token at a time until it reaches the end.",
    "This is a test of the system. If this were a real message, you would be told what to do next.",
    "Thank you for your question! Here is the answer, with a few examples and some more details.",
    "The weather today is nice and warm, so we are going to the beach with our friends and family.",
    "Can you write a short poem about the sea? The sea is wide, the sea is blue, the waves roll through.",
    "For example, the number 1234567 has seven digits, and 2025 is the year after 2024.",
    "Meeting at 10:30 on 2025-05-01; price $19.99 (about 18.50 EUR), 100% sure, 3 + 4 = 7.",
    "def hello(name):\n    return f\"Hello, {name}!\"\n\nprint(hello(\"world\"))",
    "for (int i = 0; i < n; i++) {\n    sum += x[i];\n}",
    '{"name": "get_weather", "parameters": {"location": "Paris", "unit": "celsius"}}',
]
MULTILINGUAL = [
    "Bonjour ! Comment allez-vous ? Je vais très bien, merci. Où est la gare, s'il vous plaît ?",
    "Hola, ¿cómo estás? Estoy muy bien, gracias. ¿Dónde está la biblioteca?",
    "Guten Tag! Wie geht es Ihnen? Mir geht es gut, danke. Die Straße ist sehr schön.",
    "Xin chào! Bạn có khỏe không? Tôi rất khỏe, cảm ơn bạn.",
    "Привет! Как дела? Спасибо, всё хорошо.",
    "你好！今天天气很好。我们去公园吧。",
    "こんにちは、世界。今日はいい天気ですね。",
    "مرحبا، كيف حالك؟ أنا بخير، شكرا.",
    "नमस्ते, आप कैसे हैं?",
    "I love this! 😀🎉👍 Have a great day ❤️",
]
CORPUS = CHAT_LINES * 6 + PROSE * 2 + MULTILINGUAL

# Three conversations for the model reference (short: logits are stored for every position).
CONVERSATIONS = [
    ("user_only", [{"role": "user", "content": "Hello! Who are you?"}]),
    (
        "system_user",
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    ),
    (
        "multi_turn_multilingual",
        [
            {"role": "user", "content": "Say hi in French."},
            {"role": "assistant", "content": "Bonjour !"},
            {"role": "user", "content": "Merci ! 😀"},
        ],
    ),
]

# Strings whose HF encoding (add_special_tokens=False) is stored in chat_cases.json.
ENCODE_STRINGS = [
    "Hello, world!",
    "The capital of France is Paris.",
    " leading space and trailing space ",
    "I'll say it's DONE, they'RE here and we've WON'T.",
    "Numbers: 1234567 and 3.14159, 2025-05-01.",
    "line one\nline two\n\n\nline four\r\nend",
    "tabs\tand    many   spaces\t\t!",
    "def f(x):\n    return x * 2  # comment",
    "Bonjour, ça va ? Très bien !",
    "¿Dónde está la estación? Straße, Öl, Ärger.",
    "Tiếng Việt có dấu: Xin chào các bạn.",
    "Привет, мир! Как дела?",
    "你好，世界！今天天气很好。",
    "こんにちは、世界。カタカナ。",
    "مرحبا بالعالم",
    "emoji 😀🎉👍 and ZWJ 👩‍💻 and flag 🇫🇷 and ❤️",
    "combining e\u0301 vs \u00e9, Å\u0308",
    "Specials in text: <|eot|> and <|header_start|>user<|header_end|>",
    "user\n\nassistant\n\nsystem\n\n",
    "",
]

# Same tiny widths and Scout settings as fixtures/scout-tiny (make_fixtures.py), 4 layers (NoPE 3).
TEXT = dict(
    mf.TINY,
    num_hidden_layers=4,
    intermediate_size=32,
    intermediate_size_mlp=96,
    num_local_experts=4,
    num_experts_per_tok=1,
    interleave_moe_layer_step=1,
    use_qk_norm=True,
    attention_chunk_size=8,
    no_rope_layer_interval=4,
    attn_temperature_tuning=True,
    floor_scale=4,
    attn_scale=0.1,
    rope_parameters=mf.SCOUT_ROPE,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Tokenizer


def llama4_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def train_merges() -> list[tuple[str, str]]:
    """Learn BPE_MERGES merges on CORPUS with BpeTrainer (byte-level alphabet, no specials)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = llama4_pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + BPE_MERGES,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        limit_alphabet=256,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    assert len(merges) == BPE_MERGES, f"corpus too small: only {len(merges)} merges learned"
    return merges


def build_tokenizer() -> Tokenizer:
    """Byte tokens at id = byte value, merge k produces id 256 + k (tiktoken-style ranks, like
    TikTokenConverter's output), specials right after."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    merges = train_merges()
    for a, b in merges:
        assert a in vocab and b in vocab and a + b not in vocab
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = llama4_pre_tokenizer()
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens(
        [tokenizers.AddedToken(s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True) for s in SPECIALS]
    )
    bos_id = tok.token_to_id(BOS)
    assert bos_id == 256 + BPE_MERGES
    # Llama4Converter.update_post_processor (as in make_tokenizer_cases.py): prepend BOS when
    # add_special_tokens=True.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    return tok


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def check_structure(tj: dict) -> dict:
    """Assert that everything but the vocabulary mirrors the real Llama 4 tokenizer.json."""
    import gzip

    real = json.loads(gzip.decompress(REAL_TOKENIZER.read_bytes()))
    bos_id = tj["post_processor"]["processors"][1]["special_tokens"][BOS]["ids"][0]
    real_pp = json.loads(json.dumps(real["post_processor"]).replace("200000", str(bos_id)))
    for k in ("normalizer", "pre_tokenizer", "decoder", "truncation", "padding"):
        assert tj[k] == real[k], f"tokenizer.json {k} differs from the real Llama 4 one"
    assert tj["post_processor"] == real_pp, "post_processor differs from the real Llama 4 one"
    assert tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == SPLIT_REGEX
    keys = {k: v for k, v in tj["model"].items() if k not in ("vocab", "merges")}
    rkeys = {k: v for k, v in real["model"].items() if k not in ("vocab", "merges")}
    assert keys == rkeys, (keys, rkeys)
    real_added = {t["content"]: t for t in real["added_tokens"]}
    for t in tj["added_tokens"]:
        r = dict(real_added[t["content"]], id=t["id"])
        assert t == r, (t, r)
    return {k: tj[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")} | {"model": keys}


def write_tokenizer(path: Path) -> tuple[PreTrainedTokenizerFast, dict]:
    tok = build_tokenizer()
    tok.save(str(path / "tokenizer.json"), pretty=True)
    tj = json.loads((path / "tokenizer.json").read_text())
    structure = check_structure(tj)
    template = CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")
    cfg = {
        "backend": "tokenizers",
        "bos_token": BOS,
        "eos_token": EOS_INSTRUCT,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 4096,
        "pad_token": PAD,
        "tokenizer_class": "TokenizersBackend",
        "chat_template": template,
    }
    with open(path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    hf = PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"),
        chat_template=template,
        bos_token=BOS,
        eos_token=EOS_INSTRUCT,
        pad_token=PAD,
        model_max_length=cfg["model_max_length"],
    )
    # Loading must not rewrite the pipeline (5.x can rebuild post-processors from add_bos_token).
    assert json.loads(hf.backend_tokenizer.to_str())["post_processor"] == tj["post_processor"]
    return hf, structure


# --------------------------------------------------------------------------------------------
# Model


def special_ids(hf) -> dict[str, int]:
    return {s: hf.convert_tokens_to_ids(s) for s in SPECIALS}


def text_config(ids: dict[str, int], vocab: int) -> dict:
    return dict(
        TEXT,
        vocab_size=vocab,
        bos_token_id=ids[BOS],
        eos_token_id=[ids[s] for s in STOP_TOKENS],
        pad_token_id=ids[PAD],
    )


def token_bytes(hf, i: int) -> bytes:
    inv = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inv[c] for c in hf.convert_ids_to_tokens(i))


def untextual_ids(hf, n_bpe: int) -> list[int]:
    """BPE tokens that are not printable UTF-8 on their own: lone bytes >= 0x80, pieces of
    multi-byte characters, and control characters other than \\n and \\t. Suppressing them as well
    as the specials keeps every generated token valid, printable text (a random model would
    otherwise emit stray UTF-8 bytes that decode to U+FFFD)."""
    out = []
    for i in range(n_bpe):
        try:
            s = token_bytes(hf, i).decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
            continue
        if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in s):
            out.append(i)
    return out


def suppressed(ids: dict[str, int], untextual: list[int]) -> list[int]:
    return sorted([i for s, i in ids.items() if s not in UNSUPPRESSED] + untextual)


@torch.no_grad()
def build_model(text: dict, suppress: list[int], seed: int):
    cfg = Llama4TextConfig(**text, initializer_range=0.1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Llama4ForCausalLM(cfg)
    # Same draw as make_fixtures.init_weights; only the suppressed lm_head rows differ.
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim == 1 and ("norm" in name) and leaf == "weight":
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif p.ndim == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("router.weight"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
    for i in suppress:
        model.lm_head.weight[i] *= 0.01
    return model.eval()


def search_seed(text: dict, suppress: list[int], prompts: list[torch.Tensor]) -> int:
    for seed in range(mf.MAX_SEED_TRIES):
        lm = build_model(text, suppress, seed)
        tensors, stats = mf.compute_reference(lm, prompts, check_generate=False)
        emits_suppressed = any(int(t) in suppress for i in range(len(prompts)) for t in tensors[f"prompt.{i}.greedy"])
        ok = mf.margins_ok(stats) and not emits_suppressed
        print(
            f"  seed {seed}: greedy gap {stats['min_greedy_gap']:.2e}, full gap {stats['min_full_gap']:.2e}, "
            f"router gap {stats['min_router_gap']:.2e}" + ("  <- ok" if ok else "")
        )
        if ok:
            return seed
    raise SystemExit(f"chat-tiny: no seed in range({mf.MAX_SEED_TRIES}) meets the margins")


# --------------------------------------------------------------------------------------------


def main():
    print(f"versions: {mf.VERSIONS}, tokenizers {tokenizers.__version__}, python {sys.version.split()[0]}")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    print("\n=== tokenizer")
    hf, structure = write_tokenizer(OUT)
    vocab = len(hf)
    ids = special_ids(hf)
    print(f"  vocab {vocab} (256 bytes + {BPE_MERGES} merges + {len(SPECIALS)} specials)")
    print(f"  special ids {ids}")
    assert vocab == 256 + BPE_MERGES + len(SPECIALS) and list(ids.values()) == list(range(256 + BPE_MERGES, vocab))
    merges = json.loads((OUT / "tokenizer.json").read_text())["model"]["merges"]
    print(f"  first merges {merges[:12]}")

    convs = []
    prompts = []
    for name, messages in CONVERSATIONS:
        text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        tok = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        pids = list(tok["input_ids"] if hasattr(tok, "keys") else tok)
        assert pids == hf.encode(text, add_special_tokens=False), name
        assert pids[0] == ids[BOS] and pids.count(ids[BOS]) == 1, f"{name}: BOS must appear exactly once"
        assert hf.decode(pids, skip_special_tokens=False) == text, f"{name}: decode(encode) != text"
        print(f"  {name}: {len(pids)} ids  {text!r}")
        convs.append({"name": name, "messages": messages, "add_generation_prompt": True, "text": text, "ids": pids})
        prompts.append(torch.tensor(pids, dtype=torch.int64))
    # The default post-processor prepends BOS (as the real Llama 4 tokenizer does).
    assert hf.encode("hi")[0] == ids[BOS] and hf.encode("hi")[1:] == hf.encode("hi", add_special_tokens=False)

    encodings = []
    for s in ENCODE_STRINGS:
        e = hf.encode(s, add_special_tokens=False)
        d = hf.decode(e, skip_special_tokens=False)
        assert d == s, (s, d)
        encodings.append({"text": s, "ids": e})
    print(f"  {len(encodings)} encode cases round-trip; e.g. {encodings[0]}")

    print("\n=== model")
    text = text_config(ids, vocab)
    untextual = untextual_ids(hf, 256 + BPE_MERGES)
    suppress = suppressed(ids, untextual)
    print(f"  suppressed lm_head rows: specials {sorted(set(suppress) - set(untextual))} (kept: "
          f"{sorted(ids[s] for s in UNSUPPRESSED)}) + {len(untextual)} non-printable/partial-UTF-8 BPE tokens")
    seed = search_seed(text, suppress, prompts)
    candidate, _ = mf.compute_reference(build_model(text, suppress, seed), prompts, check_generate=False)

    build_model(text, suppress, seed).save_pretrained(OUT)
    spec = {"name": "chat-tiny", "kind": "text"}
    lm = mf.reload(spec, OUT)
    tensors, stats = mf.compute_reference(lm, prompts, check_generate=True)
    for k, v in candidate.items():
        assert torch.equal(v, tensors[k]), f"chat-tiny: {k} changed after save/reload"
    print("  reference from the reloaded checkpoint == in-memory candidate, bit for bit")
    assert mf.margins_ok(stats), f"margins lost after reload: {stats}"
    for i, (d, gv) in enumerate(zip(stats["decode_vs_full"], stats["greedy_vs_full"])):
        print(f"  prompt {i} (T={len(prompts[i])}): max|decode-full| {d:.2e}, max|greedy(cache)-full| {gv:.2e}")
        assert d < 1e-4 and gv < 1e-4
    print("  generate(do_sample=False) agrees with the greedy loop on all prompts")

    # The folder itself loads as a tokenizer (tokenizer.json + tokenizer_config.json, inline template).
    auto = transformers.AutoTokenizer.from_pretrained(OUT)
    assert (auto.bos_token, auto.eos_token, auto.pad_token, len(auto)) == (BOS, EOS_INSTRUCT, PAD, vocab)
    for c in convs:
        a = auto.apply_chat_template(c["messages"], add_generation_prompt=True, tokenize=True)
        assert list(a["input_ids"] if hasattr(a, "keys") else a) == c["ids"], c["name"]
    print("  AutoTokenizer.from_pretrained(fixtures/chat-tiny) renders the same ids")

    # x0.01 rows only keep suppressed tokens out of the argmax; under sampling they keep real mass.
    sup = torch.tensor(suppress)
    mass = {}
    for temp in (1.0, 0.7):
        m = [float((tensors[f"prompt.{i}.greedy_logits"] / temp).softmax(-1)[:, sup].sum(-1).mean()) for i in range(len(prompts))]
        mass[str(temp)] = max(m)
    eot = [float(tensors[f"prompt.{i}.greedy_logits"].softmax(-1)[:, ids[EOS_INSTRUCT]].mean()) for i in range(len(prompts))]
    print(f"  sampling: probability mass on suppressed ids per step (mean over greedy rows, worst prompt) {mass}; "
          f"p(<|eot|>) at T=1 {max(eot):.2e}")

    cfg = json.loads((OUT / "config.json").read_text())
    gen = json.loads((OUT / "generation_config.json").read_text())
    assert cfg["eos_token_id"] == text["eos_token_id"] and gen["eos_token_id"] == text["eos_token_id"], (cfg, gen)
    assert cfg["bos_token_id"] == ids[BOS] and cfg["pad_token_id"] == ids[PAD] and cfg["vocab_size"] == vocab

    # generate() with the real stop list: where a reply ends by itself.
    for i, c in enumerate(convs):
        toks = tensors[f"prompt.{i}.greedy"].tolist()
        c["greedy"] = toks
        c["greedy_text"] = hf.decode(toks, skip_special_tokens=False)
        stop = next((j for j, t in enumerate(toks) if t in text["eos_token_id"]), None)
        c["greedy_stop_index"] = stop
        c["reply_text"] = hf.decode(toks[:stop] if stop is not None else toks, skip_special_tokens=False)
        print(f"  prompt {i} greedy {toks}\n    -> {c['greedy_text']!r} (stop at {stop})")

    safetensors.torch.save_file(tensors, OUT / "reference.safetensors", metadata={"format": "pt"})
    meta = {
        "fixture_version": mf.FIXTURE_VERSION,
        "generator": GENERATOR,
        "versions": mf.VERSIONS,
        "fixture": "chat-tiny",
        "weights_dtype": "float32",
        "n_prompts": len(prompts),
        "greedy_tokens": mf.GREEDY_TOKENS,
        "max_decode_vs_full": max(stats["decode_vs_full"]),
        "min_greedy_gap": stats["min_greedy_gap"],
        "min_router_gap": stats["min_router_gap"],
        "max_greedy_vs_full": max(stats["greedy_vs_full"]),
        "min_full_pass_gap": stats["min_full_gap"],
        "weights_seed": seed,
        "prompt_lengths": [len(p) for p in prompts],
        "attention_chunk_size": text["attention_chunk_size"],
        "suppressed_lm_head_ids": suppress,
        "suppressed_lm_head_note": "x0.01: all specials except <|eot|>, plus BPE tokens that are not printable UTF-8 on their own",
        "has_image_prompt": False,
        "sampling_mass_on_suppressed_ids": mass,
        "sampling_p_eot_t1": max(eot),
        "prompts": "chat-template renderings of chat_cases.json conversations (BOS included once)",
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")

    cases = {
        "generator": GENERATOR,
        "versions": dict(mf.VERSIONS, tokenizers=tokenizers.__version__),
        "vocab_size": vocab,
        "special_tokens": ids,
        "bos_token": BOS,
        "eos_token": EOS_INSTRUCT,
        "pad_token": PAD,
        "stop_token_ids": text["eos_token_id"],
        "tokenizer_json_sha256": sha256(OUT / "tokenizer.json"),
        "notes": {
            "ids": "PreTrainedTokenizerFast.apply_chat_template(messages, add_generation_prompt=True, tokenize=True); "
            "== encode(text, add_special_tokens=False); the template itself emits <|begin_of_text|>",
            "encodings": "PreTrainedTokenizerFast.encode(text, add_special_tokens=False); decode(ids) == text for all",
            "greedy": "reference.safetensors prompt.{i}.greedy (16 argmax tokens, no eos stop)",
            "greedy_text": "decode(greedy, skip_special_tokens=False)",
            "greedy_stop_index": "index of the first stop token (end_of_text/eom/eot) in greedy, or null",
            "reply_text": "decode(greedy[:greedy_stop_index]): what a chat front end stopping at eos shows",
            "add_special_tokens_true": "the post-processor prepends <|begin_of_text|> (as the real Llama 4 tokenizer.json does)",
        },
        "conversations": convs,
        "encodings": encodings,
    }
    with open(OUT / "chat_cases.json", "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")

    print("\n--- tokenizer.json structure (mirrors fixtures/tokenizer/tokenizer.json.gz)")
    print(json.dumps(structure, indent=1))
    print("\n--- config.json")
    print((OUT / "config.json").read_text())
    print("--- generation_config.json")
    print((OUT / "generation_config.json").read_text())
    total = 0
    print("--- files")
    for f in sorted(OUT.iterdir()):
        total += f.stat().st_size
        print(f"  {f.name:28s} {f.stat().st_size:9d}  {sha256(f)[:16]}")
    print(f"  total {total} bytes")
    print(
        f"\n--- summary: seed {seed}, max|decode-full| {meta['max_decode_vs_full']:.2e}, "
        f"min greedy gap {meta['min_greedy_gap']:.2e}, min full-pass gap {meta['min_full_pass_gap']:.2e}, "
        f"min router gap {meta['min_router_gap']:.2e}, prompt lengths {meta['prompt_lengths']}"
    )
    assert total < MAX_TOTAL_BYTES, f"chat-tiny is {total} bytes (limit {MAX_TOTAL_BYTES})"


if __name__ == "__main__":
    main()
