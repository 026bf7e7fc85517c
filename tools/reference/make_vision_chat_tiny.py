#!/usr/bin/env python3
"""Build fixtures/vision-chat-tiny: fixtures/vision-tiny's vision tower and text decoder with
fixtures/chat-tiny's tokenizer and chat template, so a chat request with an image can run end
to end (herd serve's image tests).

The text vocabulary grows from 320 to chat-tiny's 512 ids: the new embedding and output rows are
drawn (seeded) with the existing rows' spread; <|patch|> (509), <|image_start|> (506) and
<|image_end|> (507) become the config's image token ids, and BOS/EOS follow chat-tiny. No
reference outputs: the vision path's parity is vision-tiny's; these tests compare herd's server
with herd's own single-request path.

    /work/refenv/bin/python tools/reference/make_vision_chat_tiny.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "fixtures" / "vision-tiny"
CHAT = ROOT / "fixtures" / "chat-tiny"
OUT = ROOT / "fixtures" / "vision-chat-tiny"
VOCAB = 512


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    chat_config = json.loads((CHAT / "config.json").read_text())
    config = json.loads((SRC / "config.json").read_text())
    tokenizer = json.loads((CHAT / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    config["image_token_index"] = special["<|patch|>"]
    config["boi_token_index"] = special["<|image_start|>"]
    config["eoi_token_index"] = special["<|image_end|>"]
    text = config["text_config"]
    text["vocab_size"] = VOCAB
    text["bos_token_id"] = chat_config["bos_token_id"]
    text["eos_token_id"] = chat_config["eos_token_id"]
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = json.loads((SRC / "generation_config.json").read_text())
    generation["bos_token_id"] = chat_config["bos_token_id"]
    generation["eos_token_id"] = chat_config["eos_token_id"]
    (OUT / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    weights = load_file(SRC / "model.safetensors")
    g = torch.Generator().manual_seed(4)
    for name in ["language_model.model.embed_tokens.weight", "language_model.lm_head.weight"]:
        w = weights[name]
        extra = torch.randn(VOCAB - w.shape[0], w.shape[1], generator=g) * w.std()
        weights[name] = torch.cat([w, extra]).contiguous()
    save_file(weights, OUT / "model.safetensors", metadata={"format": "pt"})
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(CHAT / name, OUT / name)
    shutil.copy(SRC / "preprocessor_config.json", OUT / "preprocessor_config.json")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
