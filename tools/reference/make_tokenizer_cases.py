#!/usr/bin/env python3
"""Build fixtures/tokenizer/: Llama 4 tokenizer + chat-template reference data.

Run from the repo root:  /work/refenv/bin/python tools/reference/make_tokenizer_cases.py
(`--skip-throughput` leaves fixtures/tokenizer/throughput.json alone.)

Sources of truth
* Meta: llama_models 0.3.0 `llama_models/llama4/tokenizer.py` (tiktoken) and `chat_format.py`.
* Hugging Face: transformers 5.24.0 `TikTokenConverter` (convert_slow_tokenizer.py), driven the way
  transformers' `convert_llama4_weights_to_hf.py` drives it (that script is not in the wheel; see
  TOKENIZER.md), and the Llama 4 chat template shipped verbatim in
  `transformers/models/llama4/processing_llama4.py`.

Everything is deterministic (no timestamps, gzip mtime 0); only throughput.json holds timings.
See tools/reference/TOKENIZER.md for what each file contains.
"""

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_texts as T  # noqa: E402

import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
import llama_models  # noqa: E402
from llama_models.llama4 import tokenizer as meta_tok  # noqa: E402
from tokenizers import processors  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from transformers.convert_slow_tokenizer import TikTokenConverter  # noqa: E402
from transformers.models.llama4 import processing_llama4  # noqa: E402

OUT = Path("fixtures/tokenizer")
META_MODEL = Path(meta_tok.__file__).parent / "tokenizer.model"
RESOURCES = Path(llama_models.__file__).parent / "resources"

# --- what convert_llama4_weights_to_hf.py passes (instruct checkpoint) ---------------------------
HF_BOS = "<|begin_of_text|>"
HF_EOS_INSTRUCT = "<|eot|>"  # base checkpoints: "<|end_of_text|>"
HF_PAD = "<|finetune_right_pad_id|>"  # sic: not a Meta token -> appended as a NEW id
HF_MODEL_MAX_LENGTH = 10485760  # Scout instruct (16 experts); Maverick instruct 1048576; base 262144
# The converter's special list: BASIC + text-post-train + vision, *without* the reasoning tokens and
# without the 904 <|reserved_special_token_*|> fillers that llama_models appends.
HF_SPECIALS = meta_tok.BASIC_SPECIAL_TOKENS + meta_tok.LLAMA4_TEXT_POST_TRAIN_SPECIAL_TOKENS + meta_tok.LLAMA4_VISION_SPECIAL_TOKENS
CHAT_TEMPLATE = processing_llama4.chat_template
CHAT_TEMPLATE_SOURCE = "transformers 5.24.0 transformers/models/llama4/processing_llama4.py, module variable `chat_template` (verbatim)"


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def recipe_text(recipe):
    return "".join(p["repeat"] * p["times"] for p in recipe)


def _pretty(obj, ind=0):
    """JSON with dicts indented, lists of scalars on one line, list-of-dict items one per line."""
    pad, pad1 = " " * ind, " " * (ind + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {_pretty(v, ind + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return "[\n" + ",\n".join(pad1 + json.dumps(x, ensure_ascii=False) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def dump_json(path, obj, indent=None):
    with open(path, "w", encoding="utf-8") as f:
        if indent is None:
            f.write(_pretty(obj))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


# -------------------------------------------------------------------------------------------------
# 1. HF conversion
# -------------------------------------------------------------------------------------------------
def build_hf_tokenizer(tmpdir):
    conv = TikTokenConverter(
        vocab_file=str(META_MODEL),
        pattern=meta_tok.Tokenizer.O200K_PATTERN,
        extra_special_tokens=HF_SPECIALS,
    )
    tok = conv.converted()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=HF_MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        bos_token=HF_BOS,
        eos_token=HF_EOS_INSTRUCT,
        pad_token=HF_PAD,
    )
    # Llama4Converter.update_post_processor: prepend <|begin_of_text|> when add_special_tokens=True.
    bos_id = fast.convert_tokens_to_ids(HF_BOS)
    fast._tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{HF_BOS} $A",
                pair=f"{HF_BOS}:0 $A:0 {HF_BOS}:1 $B:1",
                special_tokens=[(HF_BOS, bos_id)],
            ),
        ]
    )
    save = Path(tmpdir) / "hf"
    fast.save_pretrained(save)
    return save


# -------------------------------------------------------------------------------------------------
# 2. cases
# -------------------------------------------------------------------------------------------------
def case_list():
    cases = []

    def add(category, text=None, language=None, recipe=None, note=None):
        c = {"category": category, "language": language}
        if recipe is not None:
            c["text_recipe"] = recipe
        else:
            c["text"] = text
        if note:
            c["note"] = note
        cases.append(c)

    for lang, sents in T.LANGUAGES.items():
        for s in sents:
            add("language", s, lang)
        add("language", "\n".join(sents[:6]) + "\n\n" + " ".join(sents[6:]), lang, note="paragraph")
    for kind, code in T.CODE:
        add("code", code, note=kind)
    for s in T.NUMBERS:
        add("numbers", s)
    for s in T.WHITESPACE:
        add("whitespace", s)
    for s in T.EMOJI:
        add("emoji", s)
    for s in T.MIXED:
        add("mixed_scripts", s)
    for s in T.CONTRACTIONS:
        add("contractions", s)
    for s in T.SPECIAL_TEXT:
        add("special_token_text", s)
    add("empty", "")
    for s in T.SINGLE_CHARS:
        add("single_char", s)
    for s in T.ODD_UNICODE:
        add("odd_unicode", s)
    for s in T.CONTROL:
        add("control_chars", s)
    for note, recipe in T.LONG:
        add("long", recipe=recipe, note=note)
    for i, c in enumerate(cases):
        c["id"] = i
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not Path("tools/reference").is_dir():
        sys.exit("run from the repository root")
    OUT.mkdir(parents=True, exist_ok=True)

    versions = {
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tiktoken": tiktoken.__version__ if hasattr(tiktoken, "__version__") else "?",
        "llama_models": "0.3.0",
    }
    from importlib.metadata import version

    for k, dist in [("tiktoken", "tiktoken"), ("llama_models", "llama_models"), ("jinja2", "jinja2")]:
        versions[k] = version(dist)
    print("versions:", versions)

    # ---- tokenizer.model ----
    shutil.copyfile(META_MODEL, OUT / "tokenizer.model")
    model_bytes = (OUT / "tokenizer.model").read_bytes()
    print(f"tokenizer.model: {len(model_bytes)} bytes sha256 {sha256_bytes(model_bytes)}")

    meta = meta_tok.Tokenizer(OUT / "tokenizer.model")
    assert meta.n_words == 202048 and len(meta.special_tokens) == 2048

    # ---- special_tokens.json ----
    specials = sorted(meta.special_tokens.items(), key=lambda kv: kv[1])
    hf_special_set = set(HF_SPECIALS)
    dump_json(
        OUT / "special_tokens.json",
        {
            "source": "llama_models 0.3.0 llama_models/llama4/tokenizer.py (Tokenizer.special_tokens)",
            "num_base_tokens": 200000,
            "num_special_tokens": len(specials),
            "vocab_size": meta.n_words,
            "bos_id": meta.bos_id,
            "eos_id": meta.eos_id,
            "eot_id": meta.eot_id,
            "eom_id": meta.eom_id,
            "pad_id": meta.pad_id,
            "stop_tokens": meta.stop_tokens,
            "thinking_start_id": meta.thinking_start_id,
            "thinking_end_id": meta.thinking_end_id,
            "hf_registered_ids": [200000, 200000 + len(HF_SPECIALS) - 1],
            "hf_extra_pad": {"token": HF_PAD, "id": 200000 + len(HF_SPECIALS)},
            "tokens": [{"id": i, "token": t, "in_hf": t in hf_special_set} for t, i in specials],
        },
    )

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        hf_dir = build_hf_tokenizer(tmp)
        print(f"HF conversion: {time.time() - t0:.1f}s, files {sorted(os.listdir(hf_dir))}")
        tj = (hf_dir / "tokenizer.json").read_bytes()
        (OUT / "tokenizer.json.gz").write_bytes(gzip.compress(tj, compresslevel=9, mtime=0))
        print(f"tokenizer.json: {len(tj)} bytes sha256 {sha256_bytes(tj)}; gz {os.path.getsize(OUT / 'tokenizer.json.gz')}")
        cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
        saved_template = (hf_dir / "chat_template.jinja").read_text() if (hf_dir / "chat_template.jinja").exists() else cfg.get("chat_template")
        assert saved_template == CHAT_TEMPLATE, "save_pretrained changed the chat template"
        # transformers 5.x writes the template to chat_template.jinja; 4.x (and the Hub's Llama 4
        # tokenizer_config.json) keep it inline. Write both, inline first in the config.
        cfg["chat_template"] = CHAT_TEMPLATE
        dump_json(OUT / "tokenizer_config.json", cfg, indent=2)
        (OUT / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

        hf_raw = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        hf = PreTrainedTokenizerFast(
            tokenizer_file=str(hf_dir / "tokenizer.json"),
            chat_template=CHAT_TEMPLATE,
            bos_token=cfg["bos_token"],
            eos_token=cfg["eos_token"],
            pad_token=cfg["pad_token"],
            model_max_length=cfg["model_max_length"],
        )

        quirks = verify_special_quirks(meta, hf, hf_raw)
        cases = make_cases(meta, hf, hf_raw)
        chats = make_chat_cases(meta, hf, hf_dir)
        if not args.skip_throughput:
            make_throughput(meta, hf_raw, cases)

    verify_fixture_loads(chats)

    manifest = {
        "generator": "tools/reference/make_tokenizer_cases.py",
        "versions": versions,
        "tokenizer.model_sha256": sha256_bytes(model_bytes),
        "tokenizer.json_sha256": sha256_bytes(tj),
        "chat_template_source": CHAT_TEMPLATE_SOURCE,
        "chat_template_sha256": sha256_bytes(CHAT_TEMPLATE.encode()),
        "meta_encode_defaults": "Tokenizer.encode(s, bos, eos, allowed_special=None -> set(), disallowed_special=()): "
        "special-token text is encoded as ordinary text, never raises",
        "meta_ids_allow_special": "Tokenizer.encode(s, bos=False, eos=False, allowed_special='all')",
        "hf_ids": "tokenizers.Tokenizer(tokenizer.json).encode(s, add_special_tokens=False) == PreTrainedTokenizerFast.encode(s, add_special_tokens=False)",
        "hf_decoded": "PreTrainedTokenizerFast.decode(hf_ids, skip_special_tokens=False) (specials kept, no clean-up)",
        "text_recipe": "when 'text' is absent: text = ''.join(p['repeat'] * p['times'] for p in text_recipe); "
        "hf_decoded is then replaced by hf_decoded_sha256 (sha256 of its UTF-8)",
        "special_quirks": quirks,
    }
    dump_json(OUT / "manifest.json", manifest)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"fixtures/tokenizer total: {total} bytes")
    for p in sorted(OUT.iterdir()):
        print(f"  {p.name}: {p.stat().st_size}")


def verify_special_quirks(meta, hf, hf_raw):
    q = {}
    vocab = hf_raw.get_vocab(with_added_tokens=True)
    added = hf_raw.get_added_tokens_decoder()
    q["hf_vocab_size_with_added"] = len(vocab)
    q["hf_added_tokens"] = len(added)
    q["hf_added_id_range"] = [min(added), max(added)]
    assert len(added) == 1135 and min(added) == 200000 and max(added) == 201134, (len(added), min(added), max(added))
    # 200000..201133 are Meta's tokens at Meta's ids
    for t, i in meta.special_tokens.items():
        if i <= 201133:
            assert vocab[t] == i, (t, i, vocab.get(t))
        else:
            assert t not in vocab, t
    assert vocab[HF_PAD] == 201134 and hf.pad_token_id == 201134 and HF_PAD not in meta.special_tokens
    q["hf_pad"] = {"token": HF_PAD, "id": 201134, "meta_token_at_201134": "<|reasoning_reserved_special_token_0|>"}
    assert hf.bos_token_id == 200000 and hf.eos_token_id == 200008
    q["hf_bos_eos"] = [hf.bos_token_id, hf.eos_token_id]
    assert hf_raw.id_to_token(201135) is None and hf_raw.id_to_token(202047) is None
    q["hf_decode_unknown_ids"] = {
        "decode([201135])": hf.decode([201135]),
        "decode([202047])": hf.decode([202047]),
        "meta_decode([201135])": meta.decode([201135]),
    }
    # add_special_tokens=True prepends BOS (TemplateProcessing); Meta's bos=True does the same.
    q["hf_encode_add_special_tokens_hi"] = hf.encode("hi")
    q["meta_encode_bos_hi"] = meta.encode("hi", bos=True, eos=False)
    assert q["hf_encode_add_special_tokens_hi"] == q["meta_encode_bos_hi"]
    # tiktoken's own default (disallowed_special='all') raises on special text; Meta overrides it.
    try:
        meta.model.encode("<|eot|>")
        q["tiktoken_default_on_special_text"] = "no error"
    except ValueError as e:
        q["tiktoken_default_on_special_text"] = "ValueError: " + str(e).splitlines()[0]
    print("special-token quirks verified:", json.dumps(q, ensure_ascii=False))
    return q


def make_cases(meta, hf, hf_raw):
    cases = case_list()
    lines = []
    stats = {}
    diffs = []
    for c in cases:
        text = c["text"] if "text" in c else recipe_text(c["text_recipe"])
        m = meta.encode(text, bos=False, eos=False)
        ma = meta.encode(text, bos=False, eos=False, allowed_special="all")
        h = hf_raw.encode(text, add_special_tokens=False).ids
        h2 = hf.encode(text, add_special_tokens=False)
        assert h == h2, c["id"]
        dec = hf.decode(h, skip_special_tokens=False)
        mdec = meta.decode(m)
        assert mdec == text, ("meta round trip", c["id"])
        assert meta.decode(ma) == text, ("meta allow-special round trip", c["id"])
        rec = {"id": c["id"], "category": c["category"], "language": c["language"]}
        if "text" in c:
            rec["text"] = text
        else:
            rec["text_recipe"] = c["text_recipe"]
            rec["text_len_chars"] = len(text)
            rec["text_sha256"] = sha256_bytes(text.encode())
        if "note" in c:
            rec["note"] = c["note"]
        rec["meta_ids"] = m
        rec["meta_ids_allow_special"] = ma
        rec["hf_ids"] = h
        if "text" in c:
            rec["hf_decoded"] = dec
        else:
            rec["hf_decoded_sha256"] = sha256_bytes(dec.encode())
        lines.append(json.dumps(rec, ensure_ascii=False))
        key = c["category"] if c["category"] != "language" else f"language/{c['language']}"
        s = stats.setdefault(key, {"n": 0, "hf==meta": 0, "hf==meta_allow_special": 0, "decode==text": 0})
        s["n"] += 1
        s["hf==meta"] += h == m
        s["hf==meta_allow_special"] += h == ma
        s["decode==text"] += dec == text
        if h != ma or h != m:
            diffs.append((c["id"], c["category"], c.get("note") or repr(text[:60]), h == m, h == ma, len(h), len(m), len(ma)))
    with open(OUT / "cases.jsonl", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\ncases.jsonl: {len(cases)} cases")
    print(f"{'category':28s} {'n':>4s} {'hf==meta':>9s} {'hf==meta_allow':>15s} {'decode==text':>13s}")
    tot = {"n": 0, "hf==meta": 0, "hf==meta_allow_special": 0, "decode==text": 0}
    for k in sorted(stats):
        s = stats[k]
        for kk in tot:
            tot[kk] += s[kk]
        print(f"{k:28s} {s['n']:4d} {s['hf==meta']:9d} {s['hf==meta_allow_special']:15d} {s['decode==text']:13d}")
    print(f"{'TOTAL':28s} {tot['n']:4d} {tot['hf==meta']:9d} {tot['hf==meta_allow_special']:15d} {tot['decode==text']:13d}")
    print("\ncases where hf differs from meta_ids or meta_ids_allow_special:")
    print("  id  category             hf==meta hf==allow  len(hf) len(meta) len(allow)  text/note")
    for d in diffs:
        print(f"  {d[0]:3d} {d[1]:20s} {str(d[3]):8s} {str(d[4]):9s} {d[5]:8d} {d[6]:9d} {d[7]:10d}  {d[2]}")
    return cases


# -------------------------------------------------------------------------------------------------
# 3. chat cases
# -------------------------------------------------------------------------------------------------
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Search flights between two airports on a date (ISO 8601).",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "destination": {"type": "string"},
                    "date": {"type": "string", "description": "YYYY-MM-DD"},
                    "max_stops": {"type": "integer", "minimum": 0},
                },
                "required": ["origin", "destination", "date"],
            },
        },
    },
]

TOOL_CALL_MSG = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}],
}
TOOL_RESULT_MSG = {"role": "tool", "content": "{\"temperature\": 18, \"condition\": \"cloudy\"}"}

CHATS = [
    ("user_only", [{"role": "user", "content": "Hello!"}], None, True),
    ("system_user", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ], None, True),
    ("multi_turn", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Germany?"},
    ], None, True),
    ("no_generation_prompt", [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ], None, False),
    ("system_with_surrounding_whitespace", [
        {"role": "system", "content": "\n  You are terse.  \n\n"},
        {"role": "user", "content": "  Hi there  "},
    ], None, True),
    ("multilingual_text_parts", [
        {"role": "user", "content": [{"type": "text", "text": "Traduis en vietnamien : "}, {"type": "text", "text": "« Bonne nuit »"}]},
    ], None, True),
    ("special_token_text_in_content", [
        {"role": "user", "content": "Print the string <|eot|> and then <|image|> literally."},
    ], None, True),
    ("one_image", [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in two sentences."}]},
    ], None, True),
    ("two_images", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "image"},
            {"type": "image"},
            {"type": "text", "text": "What is different between these two images?"},
        ]},
    ], None, True),
    ("tools_with_system", [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "What's the weather in Paris?"},
    ], TOOLS, True),
    ("tools_no_system", [
        {"role": "user", "content": "Find me a flight from SFO to JFK on 2025-05-01."},
    ], TOOLS, True),
    ("tool_call_and_result_with_tools", [
        {"role": "user", "content": "What's the weather in Paris?"},
        TOOL_CALL_MSG,
        TOOL_RESULT_MSG,
    ], TOOLS, True),
    ("tool_call_and_result_no_tools", [
        {"role": "user", "content": "What's the weather in Paris?"},
        TOOL_CALL_MSG,
        TOOL_RESULT_MSG,
        {"role": "assistant", "content": "It is 18 °C and cloudy in Paris."},
    ], None, False),
    ("assistant_empty_tool_calls_dropped", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! This turn has tool_calls: [] and the template drops it.", "tool_calls": []},
        {"role": "user", "content": "Bye"},
    ], None, True),
]

IMAGE_FILES = {"one_image": ["dog.jpg"], "two_images": ["dog.jpg", "pasta.jpeg"]}


def meta_render(meta, name, messages, add_generation_prompt, image_bytes):
    """Meta's ChatFormat on the same conversation, or None (with a reason) if it cannot."""
    from llama_models.datatypes import RawMediaItem, RawMessage, RawTextItem, ToolCall
    from llama_models.datatypes import ToolPromptFormat
    from llama_models.llama4.args import VisionArgs
    from llama_models.llama4.chat_format import ChatFormat

    vision = VisionArgs(
        image_size={"height": 336, "width": 336}, patch_size={"height": 14, "width": 14},
        dim=1408, n_layers=34, n_heads=16, mlp_ratio=4.0, output_dim=4096, pixel_shuffle_ratio=0.5,
    )
    cf = ChatFormat(meta, vision_args=vision if image_bytes else None, max_num_chunks=16)
    imgs = list(image_bytes or [])
    raw = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if p["type"] == "text":
                    parts.append(RawTextItem(text=p["text"]))
                else:
                    parts.append(RawMediaItem(data=imgs.pop(0)))
            content = parts
        calls = [
            ToolCall(call_id=f"call_{i}", tool_name=tc["function"]["name"], arguments=tc["function"]["arguments"])
            for i, tc in enumerate(m.get("tool_calls", []))
        ]
        raw.append(RawMessage(role=m["role"], content=content, tool_calls=calls))
    ids = [meta.special_tokens["<|begin_of_text|>"]]
    for r in raw:
        ids += cf.encode_message(r, ToolPromptFormat.json)[0]
    if add_generation_prompt:
        ids += cf._encode_header("assistant")
        # identical to ChatFormat.encode_dialog_prompt (which always adds the generation prompt)
        llm = cf.encode_dialog_prompt(raw, ToolPromptFormat.json)
        assert llm.tokens == ids
    return ids


def make_chat_cases(meta, hf, hf_dir):
    from PIL import Image
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    processor = Llama4Processor(image_processor=Llama4ImageProcessor(), tokenizer=hf, chat_template=CHAT_TEMPLATE)
    out = []
    print("\nchat cases:")
    for name, messages, tools, agp in CHATS:
        text = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=False)
        tok = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=True)
        ids = tok["input_ids"] if isinstance(tok, dict) or hasattr(tok, "keys") else tok
        ids = list(ids)
        assert ids == hf.encode(text, add_special_tokens=False), name
        e = {"name": name, "messages": messages, "tools": tools, "add_generation_prompt": agp, "text": text, "ids": ids}
        if name in IMAGE_FILES:
            files = IMAGE_FILES[name]
            pil = [Image.open(RESOURCES / f).convert("RGB") for f in files]
            # add_special_tokens=False: the rendered text already starts with <|begin_of_text|>;
            # the processor's default (True) would prepend a second BOS (745 instead of 744 ids).
            enc = processor(text=text, images=pil, return_tensors="pt", add_special_tokens=False)
            dbl = processor(text=text, images=pil, return_tensors="pt")["input_ids"][0].tolist()
            assert dbl[:2] == [200000, 200000] and dbl[1:] == enc["input_ids"][0].tolist()
            e["images"] = [{"file": f"llama_models 0.3.0 llama_models/resources/{f}", "width": im.size[0], "height": im.size[1]} for f, im in zip(files, pil)]
            ars = processor.image_processor(pil, return_tensors="pt")["aspect_ratios"]
            e["image_aspect_ratios"] = [list(map(int, ar)) for ar in ars]
            e["processor_ids"] = enc["input_ids"][0].tolist()
            image_bytes = [(RESOURCES / f).read_bytes() for f in files]
        else:
            image_bytes = None
        if tools is None:
            mids = meta_render(meta, name, messages, agp, image_bytes)
            e["meta_ids"] = mids
            target = e.get("processor_ids", ids)
            e["meta_equal"] = mids == target
        else:
            e["meta_ids"] = None
            e["meta_note"] = "llama_models ChatFormat has no tool-definition prompt; not rendered"
        out.append(e)
        extra = f" processor_ids {len(e['processor_ids'])} ar {e['image_aspect_ratios']}" if "processor_ids" in e else ""
        meq = e.get("meta_equal", "n/a")
        print(f"  {name:36s} ids {len(ids):5d}{extra} meta_equal {meq}")
        if meq is False:
            print_first_diff(meta, e["processor_ids"] if "processor_ids" in e else ids, e["meta_ids"])
    with open(OUT / "chat_cases.json", "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in out) + "\n]\n")
    return out


def verify_fixture_loads(chats):
    """The committed files alone (gunzipped tokenizer.json + tokenizer_config.json) reproduce the chats."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.json").write_bytes(gzip.decompress((OUT / "tokenizer.json.gz").read_bytes()))
        shutil.copyfile(OUT / "tokenizer_config.json", Path(d) / "tokenizer_config.json")
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.chat_template == CHAT_TEMPLATE
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (200000, 200008, 201134)
        for e in chats:
            text = tok.apply_chat_template(e["messages"], tools=e["tools"], add_generation_prompt=e["add_generation_prompt"], tokenize=False)
            assert text == e["text"] and tok.encode(text, add_special_tokens=False) == e["ids"], e["name"]
    print(f"AutoTokenizer.from_pretrained(fixture files) -> {type(tok).__name__}: all {len(chats)} chats reproduce")


def print_first_diff(meta, a, b):
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    print(f"      first difference at token {i}: hf {meta.decode(a[i:i + 40])!r}")
    print(f"      {'':29s}meta {meta.decode(b[i:i + 40])!r}")


# -------------------------------------------------------------------------------------------------
# 4. throughput
# -------------------------------------------------------------------------------------------------
def make_throughput(meta, hf_raw, cases):
    ids = [c["id"] for c in cases if c["category"] in ("language", "code", "mixed_scripts", "emoji", "numbers", "contractions")]
    texts = {c["id"]: c["text"] for c in cases if "text" in c}
    sep = "\n"
    unit = sep.join(texts[i] for i in ids) + sep
    times = -(-10_000_000 // len(unit.encode()))
    text = unit * times
    nbytes = len(text.encode())
    recipe = {
        "source": "fixtures/tokenizer/cases.jsonl",
        "case_ids": ids,
        "separator": sep,
        "times": times,
        "definition": "text = (separator.join(case[id].text for id in case_ids) + separator) * times",
        "sha256": sha256_bytes(text.encode()),
    }

    def bench(fn, reps=3):
        best = None
        for _ in range(reps):
            t = time.perf_counter()
            r = fn()
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        return best, r

    # tiktoken core: the 400k-char pieces Meta uses, encode_ordinary, one thread
    pieces = [text[i:i + 400_000] for i in range(0, len(text), 400_000)]
    t_core, r_core = bench(lambda: [t for p in pieces for t in meta.model.encode_ordinary(p)])
    t_meta, r_meta = bench(lambda: meta.encode(text, bos=False, eos=False), reps=1)
    t_hf, r_hf = bench(lambda: [t for p in pieces for t in hf_raw.encode(p, add_special_tokens=False).ids])
    t_hf_whole, r_hf_whole = bench(lambda: hf_raw.encode(text, add_special_tokens=False).ids, reps=1)
    t_hf_batch, r_hf_batch = bench(lambda: [t for e in hf_raw.encode_batch(pieces, add_special_tokens=False) for t in e.ids])
    mb = nbytes / 1e6
    assert r_core == r_meta and r_hf_batch == r_hf
    res = {
        "text_recipe": recipe,
        "bytes": nbytes,
        "chars": len(text),
        "meta_tokens": len(r_meta),
        "hf_tokens_on_pieces": len(r_hf),
        "hf_on_pieces_equals_meta": r_hf == r_meta,
        "hf_tokens_whole_text": len(r_hf_whole),
        "hf_whole_text_equals_meta": r_hf_whole == r_meta,
        "tiktoken_mb_per_s": round(mb / t_core, 2),
        "meta_tokenizer_encode_mb_per_s": round(mb / t_meta, 2),
        "hf_tokenizers_mb_per_s": round(mb / t_hf, 2),
        "hf_tokenizers_whole_text_mb_per_s": round(mb / t_hf_whole, 2),
        "hf_tokenizers_encode_batch_mb_per_s": round(mb / t_hf_batch, 2),
        "pieces": "text[i:i+400000] for i in range(0, len(text), 400000) (Python str indices = Unicode scalar values)",
        "method": {
            "tiktoken_mb_per_s": "tiktoken Encoding (Meta's Tokenizer.model).encode_ordinary over 400,000-char pieces; best of 3; 1 thread",
            "meta_tokenizer_encode_mb_per_s": "llama_models Tokenizer.encode(text, bos=False, eos=False) incl. its pure-Python run splitting; 1 run",
            "hf_tokenizers_mb_per_s": "tokenizers.Tokenizer(tokenizer.json).encode(piece, add_special_tokens=False) over the same 400,000-char pieces, sequential; best of 3",
            "hf_tokenizers_whole_text_mb_per_s": "the same on the whole 10 MB text in one call; 1 run",
            "hf_tokenizers_encode_batch_mb_per_s": "encode_batch(pieces) (rayon, all cores); best of 3",
            "MB": "10^6 bytes of UTF-8",
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                    "load_average_1m_after": round(os.getloadavg()[0], 2),
                    "tiktoken": tiktoken.__version__ if hasattr(tiktoken, "__version__") else None,
                    "tokenizers": tokenizers.__version__},
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    res["machine"]["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dump_json(OUT / "throughput.json", res)
    print(f"\nthroughput on {nbytes} bytes ({len(r_meta)} tokens): tiktoken {res['tiktoken_mb_per_s']} MB/s, "
          f"Meta encode {res['meta_tokenizer_encode_mb_per_s']} MB/s, HF tokenizers {res['hf_tokenizers_mb_per_s']} MB/s, "
          f"(whole text {res['hf_tokenizers_whole_text_mb_per_s']}, batch {res['hf_tokenizers_encode_batch_mb_per_s']}); "
          f"hf(pieces)==meta {res['hf_on_pieces_equals_meta']}, hf(whole)==meta {res['hf_whole_text_equals_meta']}")


if __name__ == "__main__":
    main()
