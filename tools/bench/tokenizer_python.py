"""Times Python's tokenizers on the same text as `cargo bench -p herd-text --bench tokenize`.

Needs the packages of tools/reference/requirements-tokenizer.txt (tiktoken, llama-models,
tokenizers). Prints a table, then one JSON line.
"""
import gzip
import json
import sys
import time
from pathlib import Path

import tiktoken
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2] / "fixtures" / "tokenizer"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))


def bench_text():
    spec = json.loads((ROOT / "throughput.json").read_text())
    r = spec["text_recipe"]
    cases = {c["id"]: c for c in map(json.loads, (l for l in (ROOT / "cases.jsonl").read_text().split("\n") if l))}
    unit = r["separator"].join(cases[i]["text"] for i in r["case_ids"]) + r["separator"]
    text = unit * r["times"]
    assert len(text.encode()) == spec["bytes"]
    return text


def best_of(n, fn):
    best = None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, out


def main():
    from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer

    text = bench_text()
    mb = len(text.encode()) / 1e6
    meta = MetaTokenizer(ROOT / "tokenizer.model")
    hf = Tokenizer.from_str(gzip.decompress((ROOT / "tokenizer.json.gz").read_bytes()).decode())
    pieces = [text[i:i + 400_000] for i in range(0, len(text), 400_000)]
    t_core, ids = best_of(3, lambda: [t for p in pieces for t in meta.model.encode_ordinary(p)])
    t_meta, ids_meta = best_of(1, lambda: meta.encode(text, bos=False, eos=False))
    t_hf, ids_hf = best_of(3, lambda: [t for p in pieces for t in hf.encode(p, add_special_tokens=False).ids])
    assert ids == ids_meta == ids_hf
    print(f"tokenization of {mb:.2f} MB ({len(ids)} tokens), best of 3, 1 thread")
    print(f"{'tokenizer':<44} {'MB/s':>8}")
    print(f"{'python tiktoken encode_ordinary (pieces)':<44} {mb / t_core:>8.2f}")
    print(f"{'python llama_models Tokenizer.encode':<44} {mb / t_meta:>8.2f}")
    print(f"{'python tokenizers tokenizer.json (pieces)':<44} {mb / t_hf:>8.2f}")
    print(json.dumps({"bench": "tokenize_python", "tokens": len(ids), "tiktoken_mb_per_s": mb / t_core,
                      "llama_models_mb_per_s": mb / t_meta, "hf_tokenizers_mb_per_s": mb / t_hf}))


if __name__ == "__main__":
    main()
