#!/usr/bin/env python3
"""Row statistics of herd's and llama.cpp's quantized kernels against the transformers reference of
the same fixtures/gguf-tiny file (what gguf_parity's kernel-bounds test checks for herd alone).

    /work/refenv/bin/python tools/reference/quantized_rows_vs_llama_cpp.py \\
        --herd target/release/herd --llama-greedy /work/llama-build/llama_greedy q3_k_m q2_k ...

For each file tag T (model-T.gguf, reference prefix `T.`): the two short prompts (every row) and
the 8200-token prompt (rows 0..7, 8184..8199) through llama.cpp (tools/reference/llama_greedy.cpp)
and `herd logits`; per row, max |Δ| over the row's max |reference logit|, and whether the argmax
agrees. Prints the median, the max and the top-1 agreement of llama.cpp vs the reference, herd vs
the reference, and herd vs llama.cpp. Both engines round the activations to 8 bits (Q8_0, Q8_1,
Q8_K) where the reference computes in f32, so neither sits at 0; the point is that herd's
distance is llama.cpp's.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "gguf-tiny"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--herd", type=Path, required=True)
    ap.add_argument("--llama-greedy", type=Path, required=True)
    ap.add_argument("tags", nargs="+", help="file tags: q8_0 q4_k_m q6_k q3_k_m q2_k q4_1 q5_0 q5_1")
    args = ap.parse_args()
    ref = load_file(FIXTURE / "reference.safetensors")
    n_vocab = ref["short.0.logits"].shape[-1]
    work = Path(tempfile.mkdtemp(prefix="herd-rows-"))

    def run(cmd):
        res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed (rc {res.returncode}): {res.stderr[-800:]}")

    def llama(f, ids):
        out = work / "llama.f32"
        run([args.llama_greedy, f, ",".join(map(str, ids)), 1, out])
        return np.fromfile(out, dtype="<f4").reshape(-1, n_vocab)[: len(ids)]

    def herd(f, ids):
        out = work / "herd.safetensors"
        run([args.herd, "logits", "--model", f, "--tokens", ",".join(map(str, ids)), "--out", out])
        return load_file(out)["logits"]

    print(f"{'file':8s} {'pair':16s} {'rows':>4s} {'median':>8s} {'max':>8s} {'top-1':>7s}")
    for tag in args.tags:
        f, pre = FIXTURE / f"model-{tag}.gguf", f"{tag}."
        pairs = {"llama.cpp-ref": ([], []), "herd-ref": ([], []), "herd-llama.cpp": ([], [])}
        prompts = [(ref[f"short.{i}.ids"], None, ref[f"{pre}short.{i}.logits"]) for i in (0, 1)]
        prompts.append((ref["long.ids"], ref["long.rows"], ref[f"{pre}long.logits"]))
        for ids, rows, r in prompts:
            l, h = llama(f, ids), herd(f, ids)
            if rows is not None:
                l, h = l[rows], h[rows]
            for name, (a, b) in (("llama.cpp-ref", (l, r)), ("herd-ref", (h, r)), ("herd-llama.cpp", (h, l))):
                pairs[name][0].extend(np.abs(a - b).max(1) / np.abs(b).max(1))
                pairs[name][1].extend(a.argmax(1) == b.argmax(1))
        for name, (d, top) in pairs.items():
            d = np.array(d)
            print(f"{tag:8s} {name:16s} {len(d):4d} {np.median(d):8.4f} {d.max():8.4f} {100 * np.mean(top):6.1f}%")


if __name__ == "__main__":
    main()
