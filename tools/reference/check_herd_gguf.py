#!/usr/bin/env python3
"""Cross-check `herd quantize` against llama.cpp on fixtures/gguf-tiny (read-only; writes only to --work).

    LLAMA_QUANTIZE=/work/llama-build/build/bin/llama-quantize \\
        /work/refenv/bin/python tools/reference/check_herd_gguf.py --herd target/debug/herd

For each file type T in BF16, Q8_0, Q4_K_M, Q6_K:
  a. `herd quantize --model fixtures/gguf-tiny --out WORK/herd-T.gguf --type T`; the file must parse
     with gguf-py's GGUFReader (from the pinned llama.cpp tree). Its ggml type per tensor is compared
     with llama.cpp's choice for the same T: model-bf16.gguf (convert_hf_to_gguf.py --outtype bf16),
     `llama-quantize model-bf16.gguf ... Q8_0` (also the converter's model-q8_0.gguf),
     model-q4_k_m.gguf and model-q6_k.gguf (llama-quantize, written by make_gguf_fixtures.py).
     Every difference (type, shape, missing tensor) is printed; metadata keys are diffed too.
  b. For tensors where both chose the same type: the fraction of identical blocks (block = one ggml
     quant block; F32/BF16: one element), which block fields differ, and max |Δ| of the dequantized
     values (gguf.quants.dequantize).
  c. llama.cpp's C loader on herd's files: `llama-quantize WORK/herd-bf16.gguf WORK/requant.gguf Q8_0`
     (its result is compared with llama-quantize's Q8_0 of model-bf16.gguf), and, when llama-completion
     sits beside llama-quantize, `-n 4 --temp 0` on a short text prompt for every herd GGUF and
     llama.cpp's own files (accepted or not, the text shown; `herd generate` beside it).
  d. With llama_greedy (tools/reference/llama_greedy.cpp, built against the same llama.cpp; --llama-greedy
     or $LLAMA_GREEDY): for every herd GGUF and every fixture GGUF, the short reference prompts through
     llama.cpp (logits of every position + 4 greedy ids) vs `herd logits` / `herd generate --tokens`
     on the same file, and, for the fixture files, both vs the transformers reference of that file
     (`""`, `q8_0.`, `q4_k_m.`, `q6_k.`, `q3_k_m.`, `q2_k.`, `q4_1.`, `q5_0.`, `q5_1.`); also the 8200-token prompt through llama.cpp for the
     fixture files (rows 0..7, 8184..8199; skip with --no-long). llama.cpp's CPU matmuls round the
     activations to the weight's vec-dot type (bf16, Q8_0/Q8_K), so it sits ~1e-2..1e-1 from an f32
     reference; herd computes in f32 and should sit at ~1e-5 from the reference of the same file.

Exit status 0 even when differences are found (it reports; it does not judge), 1 on a hard failure
(a file that does not parse, a tool that fails to run is reported verbatim and counted).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_LLAMA_CPP = Path(f"/work/llama-cpp-python/llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp")
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "gguf-tiny"
TYPES = ["BF16", "Q8_0", "Q4_K_M", "Q6_K"]
PROMPT = "Hello world"
N_PREDICT = 4

# Field layout of the block types that occur here (bytes), for "which part of a block differs".
BLOCK_FIELDS = {
    "Q8_0": [("d", 2), ("qs", 32)],
    "Q4_K": [("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)],
    "Q5_K": [("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)],
    "Q6_K": [("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)],
}

failures: list[str] = []


def sh(argv: list[str], errors: str = "backslashreplace", **kw) -> subprocess.CompletedProcess:
    """Run, capture, decode as UTF-8 (`errors="replace"` turns a partial UTF-8 sequence into U+FFFD,
    as herd's own output does)."""
    shown = " ".join(repr(a) if " " in str(a) else str(a) for a in argv)
    print(f"  $ {shown}")
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, encoding="utf-8", errors=errors, **kw)


def read(path: Path):
    r = gguf.GGUFReader(path)
    kv = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            items = [f.parts[i] for i in f.data]
            sub = f.types[1] if len(f.types) > 1 else None
            if sub == gguf.GGUFValueType.STRING:
                kv[name] = [bytes(x).decode("utf-8", "backslashreplace") for x in items]
            else:
                kv[name] = [x.tolist()[0] for x in items]
        elif vt == gguf.GGUFValueType.STRING:
            kv[name] = bytes(f.parts[f.data[0]]).decode("utf-8", "backslashreplace")
        else:
            kv[name] = (vt.name, f.parts[f.data[0]].tolist()[0])
    return r, kv


def short(v) -> str:
    s = repr(v)
    return s if len(s) <= 90 else s[:87] + "..."


def diff_meta(kv_h: dict, kv_l: dict, label: str):
    only_h = sorted(set(kv_h) - set(kv_l))
    only_l = sorted(set(kv_l) - set(kv_h))
    differ = sorted(k for k in set(kv_h) & set(kv_l) if kv_h[k] != kv_l[k])
    print(f"  metadata vs {label}: {len(kv_h)} keys (herd) / {len(kv_l)} (llama.cpp); "
          f"only herd {len(only_h)}, only llama.cpp {len(only_l)}, different values {len(differ)}")
    for k in only_h:
        print(f"    only herd:      {k} = {short(kv_h[k])}")
    for k in only_l:
        print(f"    only llama.cpp: {k} = {short(kv_l[k])}")
    for k in differ:
        print(f"    differs:        {k}: herd {short(kv_h[k])}  llama.cpp {short(kv_l[k])}")


def compare(herd_path: Path, ref_path: Path, label: str, source: dict[str, np.ndarray]) -> dict:
    """Types, shapes, bytes and dequantized values, tensor by tensor. `source`: the unquantized
    weights (model-bf16.gguf as f32), for the quantization error of each side."""
    rh, kv_h = read(herd_path)
    rl, kv_l = read(ref_path)
    th = {t.name: t for t in rh.tensors}
    tl = {t.name: t for t in rl.tensors}
    print(f"\n  herd {herd_path.name} ({herd_path.stat().st_size} B, {len(th)} tensors) vs {label} "
          f"{ref_path.name} ({ref_path.stat().st_size} B, {len(tl)} tensors)")
    diff_meta(kv_h, kv_l, label)
    for n in sorted(set(th) - set(tl)):
        print(f"    TENSOR only in herd: {n}")
    for n in sorted(set(tl) - set(th)):
        print(f"    TENSOR only in llama.cpp: {n}")
    if [t.name for t in rh.tensors] != [t.name for t in rl.tensors]:
        print("    tensor ORDER differs (not an error: GGUF readers index by name)")
    rows, type_diffs = [], []
    tot_blocks = tot_same = 0  # quantized blocks (Q8_0, Q4_K, Q6_K, ...)
    plain_tensors = plain_same = 0  # F32 / F16 / BF16 tensors, byte for byte
    err_h = err_l = n_err = 0.0
    for n in [t.name for t in rl.tensors if t.name in th]:
        a, b = th[n], tl[n]
        sa, sb = [int(x) for x in a.shape], [int(x) for x in b.shape]
        if sa != sb:
            print(f"    SHAPE differs: {n}: herd ne {sa}, llama.cpp ne {sb}")
            continue
        ta, tb = a.tensor_type.name, b.tensor_type.name
        da = np.asarray(gguf.quants.dequantize(a.data, a.tensor_type), dtype=np.float32)
        db = np.asarray(gguf.quants.dequantize(b.data, b.tensor_type), dtype=np.float32)
        maxd = float(np.abs(da - db).max())
        scale = float(np.abs(db).max()) or 1.0
        if n in source and ta not in ("F32", "BF16", "F16"):
            err_h += float(((da - source[n]) ** 2).sum())
            err_l += float(((db - source[n]) ** 2).sum())
            n_err += da.size
        if ta != tb:
            type_diffs.append((n, ta, tb))
            rows.append((n, ta, tb, None, None, maxd, maxd / scale, ""))
            continue
        bs, ts = gguf.constants.GGML_QUANT_SIZES[a.tensor_type]
        ba = np.ascontiguousarray(a.data).view(np.uint8).reshape(-1, ts)
        bb = np.ascontiguousarray(b.data).view(np.uint8).reshape(-1, ts)
        same = (ba == bb).all(axis=1)
        fields = ""
        if not same.all() and ta in BLOCK_FIELDS:
            off, parts = 0, []
            for fname, size in BLOCK_FIELDS[ta]:
                nd = int((ba[:, off:off + size] != bb[:, off:off + size]).any(axis=1).sum())
                parts.append(f"{fname} {nd}")
                off += size
            assert off == ts, (ta, off, ts)
            fields = "differing blocks by field: " + ", ".join(parts)
        if ta in ("F32", "F16", "BF16"):
            plain_tensors += 1
            plain_same += int(same.all())
        else:
            tot_blocks += len(same)
            tot_same += int(same.sum())
        rows.append((n, ta, tb, int(same.sum()), len(same), maxd, maxd / scale, fields))
    print(f"    {'tensor':28s} {'herd':6s} {'llama':6s} {'same blocks':>15s}  {'max|Δ|':>9s} {'/max|w|':>9s}")
    for n, ta, tb, ns, nb, maxd, rel, fields in rows:
        blk = f"{ns}/{nb}" if nb is not None else "TYPE DIFF"
        flag = "" if ta == tb and ns == nb else "  <--"
        print(f"    {n:28s} {ta:6s} {tb:6s} {blk:>15s}  {maxd:9.2e} {rel:9.2e}{flag}" + (f"  {fields}" if fields else ""))
    print(f"    type differences: {len(type_diffs)}" + "".join(f"\n      {n}: herd {ta}, llama.cpp {tb}" for n, ta, tb in type_diffs))
    print(f"    same-type unquantized (F32/F16/BF16) tensors byte-identical: {plain_same}/{plain_tensors}")
    if tot_blocks:
        print(f"    same-type quantized tensors: {tot_same}/{tot_blocks} blocks identical ({100 * tot_same / tot_blocks:.3f}%)")
    if n_err:
        print(f"    quantization error vs the bf16 weights, all quantized tensors: RMS herd {np.sqrt(err_h / n_err):.4e}, "
              f"llama.cpp {np.sqrt(err_l / n_err):.4e} (herd/llama.cpp {np.sqrt(err_h / err_l):.3f})")
    same_type = [r for r in rows if r[1] == r[2]]
    max_abs = max((r[5] for r in same_type), default=0.0)
    max_rel = max((r[6] for r in same_type), default=0.0)
    print(f"    same-type tensors: max |Δ| of dequantized values {max_abs:.3e} (max over tensors of max|Δ|/max|w|: {max_rel:.3e})")
    return {"type_diffs": type_diffs, "same_blocks": tot_same, "blocks": tot_blocks, "plain_same": plain_same, "plain": plain_tensors,
            "max_abs": max_abs, "max_rel": max_rel,
            "rms_herd": np.sqrt(err_h / n_err) if n_err else 0.0, "rms_llama": np.sqrt(err_l / n_err) if n_err else 0.0}


def generate_llama(bin_dir: Path, model: Path) -> str | None:
    """4 greedy tokens with llama-completion. `-nr` (no weight repacking / extra CPU buffer types):
    without it this llama.cpp build (GGML_NATIVE on an AMX_INT8 CPU) segfaults in
    ggml_backend_amx_mul_mat on every quantized file, llama.cpp's own included (README, gguf-tiny)."""
    exe = bin_dir / "llama-completion"
    res = sh([exe, "-m", model, "-p", PROMPT, "-n", N_PREDICT, "--temp", "0", "-no-cnv", "--no-warmup", "-t", "2", "-nr"],
             errors="replace", cwd="/tmp")
    log = res.stdout + res.stderr
    if res.returncode != 0:
        failures.append(f"llama-completion on {model.name}: rc {res.returncode}")
        errs = [l for l in log.splitlines() if any(w in l.lower() for w in ("error", "failed", "unknown", "invalid", "wrong"))]
        print(f"    llama-completion: REJECTED, rc {res.returncode}; error lines verbatim:")
        for l in errs or log.splitlines()[-15:]:
            print(f"      {l}")
        return None
    text = res.stdout
    if text.startswith(PROMPT):
        text = text[len(PROMPT):]
    print(f"    llama-completion: accepted (rc 0), continuation {text!r}")
    return text


def generate_herd(herd: Path, model: Path) -> str | None:
    res = sh([herd, "generate", "--model", model, "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", N_PREDICT,
              "--ignore-eos"], errors="replace")
    if res.returncode != 0:
        failures.append(f"herd generate on {model.name}: rc {res.returncode}")
        print(f"    herd generate: rc {res.returncode}: {(res.stderr or res.stdout).strip()[-800:]}")
        return None
    print(f"    herd generate:    continuation {res.stdout.rstrip(chr(10))!r}")
    return res.stdout.rstrip("\n")


def load_f32_rows(path: Path, n_vocab: int) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(-1, n_vocab)


def llama_greedy(exe: Path, model: Path, ids: np.ndarray, n: int, work: Path, n_vocab: int):
    out = work / "llama_greedy.f32"
    res = sh([exe, model, ",".join(str(int(i)) for i in ids), n, out])
    if res.returncode != 0:
        failures.append(f"llama_greedy on {model.name}: rc {res.returncode}")
        print(f"    llama_greedy REJECTED {model.name}, rc {res.returncode}: {res.stderr.strip()[-1500:]}")
        return None, None
    toks = [int(x) for x in res.stdout.split()[1].split(",")]
    return load_f32_rows(out, n_vocab), toks


def herd_logits(herd: Path, model: Path, ids: np.ndarray, work: Path):
    from safetensors.numpy import load_file

    out = work / "herd_logits.safetensors"
    res = sh([herd, "logits", "--model", model, "--tokens", ",".join(str(int(i)) for i in ids), "--out", out])
    if res.returncode != 0:
        failures.append(f"herd logits on {model.name}: rc {res.returncode}")
        print(f"    herd logits on {model.name}: rc {res.returncode}: {res.stderr.strip()[-800:]}")
        return None
    return load_file(out)["logits"]


def herd_greedy(herd: Path, model: Path, ids: np.ndarray, n: int):
    res = sh([herd, "generate", "--model", model, "--tokens", ",".join(str(int(i)) for i in ids), "--temperature", "0",
              "--max-new-tokens", n, "--ignore-eos"])
    if res.returncode != 0:
        failures.append(f"herd generate on {model.name}: rc {res.returncode}")
        print(f"    herd generate on {model.name}: rc {res.returncode}: {res.stderr.strip()[-800:]}")
        return None
    return [int(x) for x in res.stdout.split()]


def section_d(args, herd_files: dict, fx: Path, exe: Path):
    from safetensors.numpy import load_file

    ref = load_file(fx / "reference.safetensors")
    n_vocab = ref["short.0.logits"].shape[-1]
    n = N_PREDICT
    files = [(f"herd {t}", f, None) for t, f in herd_files.items()] + [
        (f"fixture {f.name}", f, pre) for f, pre in ((fx / "model-bf16.gguf", ""), *(
            (fx / f"model-{t}.gguf", f"{t}.") for t in ("q8_0", "q4_k_m", "q6_k", "q3_k_m", "q2_k", "q4_1", "q5_0", "q5_1")))
        if f.exists() and f"{pre}short.0.logits" in ref]
    rows = []
    for label, f, pre in files:
        print(f"\n  -- {label}: {f}")
        for i in (0, 1):
            ids = ref[f"short.{i}.ids"]
            ll, lt = llama_greedy(exe, f, ids, n, args.work, n_vocab)
            hl = herd_logits(args.herd, f, ids, args.work)
            ht = herd_greedy(args.herd, f, ids, n)
            if ll is None or hl is None or ht is None:
                continue
            d_lh = float(np.abs(ll[: len(ids)] - hl).max())
            line = f"    short.{i} ({len(ids)} ids): max|Δlogit| llama.cpp vs herd {d_lh:.2e}; greedy llama.cpp {lt} herd {ht}" + \
                ("" if lt == ht else "  <-- differ")
            r = {"file": label, "prompt": f"short.{i}", "llama_vs_herd": d_lh, "greedy_same": lt == ht}
            if pre is not None:
                rl = ref[f"{pre}short.{i}.logits"]
                rg = ref[f"{pre}short.{i}.greedy"][:n].tolist()
                r["herd_vs_ref"] = float(np.abs(hl - rl).max())
                r["llama_vs_ref"] = float(np.abs(ll[: len(ids)] - rl).max())
                line += (f"\n      vs transformers `{pre or 'bf16 '}` reference: herd {r['herd_vs_ref']:.2e}, llama.cpp {r['llama_vs_ref']:.2e}; "
                         f"reference greedy {rg} (herd {'same' if ht == rg else 'DIFFERENT'}, llama.cpp {'same' if lt == rg else 'different'})")
            print(line)
            rows.append(r)
        if pre is not None and not args.no_long:
            ids, lr = ref["long.ids"], ref["long.rows"]
            ll, lt = llama_greedy(exe, f, ids, 1, args.work, n_vocab)
            if ll is not None:
                d = np.abs(ll[lr] - ref[f"{pre}long.logits"]).max(axis=1)
                same = int((ll[lr].argmax(1) == ref[f"{pre}long.argmax"]).sum())
                print(f"    long ({len(ids)} ids) through llama.cpp vs the `{pre or 'bf16 '}` reference: max|Δlogit| rows 0..7 "
                      f"{d[:8].max():.2e}, rows 8184..8191 {d[8:16].max():.2e}, rows 8192..8199 {d[16:].max():.2e}; "
                      f"same argmax {same}/{len(lr)}")
                rows.append({"file": label, "prompt": "long", "llama_vs_ref": float(d.max()), "same_argmax": same})
    return rows


def main():
    global gguf
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--herd", type=Path, default=Path(os.environ.get("HERD_BIN", ROOT / "target" / "debug" / "herd")),
                    help="herd binary (default $HERD_BIN or target/debug/herd; a copy is safer while cargo rebuilds)")
    ap.add_argument("--llama-quantize", type=Path, default=os.environ.get("LLAMA_QUANTIZE") or None,
                    help="llama.cpp's llama-quantize (default $LLAMA_QUANTIZE); llama-simple / llama-completion are looked up beside it")
    ap.add_argument("--llama-cpp", type=Path, default=Path(os.environ.get("HERD_LLAMA_CPP", DEFAULT_LLAMA_CPP)),
                    help="llama.cpp tree whose gguf-py is used")
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--work", type=Path, default=Path("/tmp/herd-gguf-check"), help="scratch folder for the GGUFs written here")
    ap.add_argument("--llama-greedy", type=Path, default=os.environ.get("LLAMA_GREEDY") or None,
                    help="llama_greedy binary (tools/reference/llama_greedy.cpp; default $LLAMA_GREEDY, else llama_greedy beside "
                         "llama-quantize's build folder); section d is skipped without it")
    ap.add_argument("--no-long", action="store_true", help="section d: skip the 8200-token prompt through llama.cpp (~20 s per file)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.llama_cpp.resolve() / "gguf-py"))
    import gguf as _gguf

    gguf = _gguf
    if args.llama_quantize is None:
        raise SystemExit("needs llama-quantize: set LLAMA_QUANTIZE=/path/to/llama-quantize (README, gguf-tiny)")
    lq = args.llama_quantize.resolve()
    bin_dir = lq.parent
    args.work.mkdir(parents=True, exist_ok=True)
    fx = args.fixture.resolve()
    res = sh([args.herd, "--version"])
    print(f"herd: {args.herd} ({res.stdout.strip()}); llama-quantize: {lq}; gguf-py: {gguf.__file__}")

    # llama.cpp's choices for each type
    lq_q8 = args.work / "llama-q8_0.gguf"
    print("\n=== llama.cpp files")
    res = sh([lq, fx / "model-bf16.gguf", lq_q8, "Q8_0", "2"])
    if res.returncode != 0:
        print(res.stdout + res.stderr)
        raise SystemExit("llama-quantize failed on model-bf16.gguf")
    version = next((l.split(":", 1)[1].strip() for l in (res.stdout + res.stderr).splitlines() if l.lower().startswith("version:")), "?")
    print(f"  llama-quantize version {version}")
    refs = {"BF16": [("converter --outtype bf16", fx / "model-bf16.gguf")],
            "Q8_0": [("llama-quantize Q8_0", lq_q8), ("converter --outtype q8_0", fx / "model-q8_0.gguf")],
            "Q4_K_M": [("llama-quantize Q4_K_M", fx / "model-q4_k_m.gguf")],
            "Q6_K": [("llama-quantize Q6_K", fx / "model-q6_k.gguf")]}

    rb = gguf.GGUFReader(fx / "model-bf16.gguf")
    source = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32) for t in rb.tensors}

    # a + b
    herd_files = {}
    summary, gen = [], []
    for t in TYPES:
        print(f"\n=== {t}")
        out = args.work / f"herd-{t.lower()}.gguf"
        res = sh([args.herd, "quantize", "--model", fx, "--out", out, "--type", t, "--quiet"])
        if res.returncode != 0:
            failures.append(f"herd quantize {t}: rc {res.returncode}")
            print(f"  herd quantize {t} FAILED rc {res.returncode}: {res.stderr.strip()}")
            continue
        try:
            r = gguf.GGUFReader(out)
            print(f"  GGUFReader: parsed {out.name}: {len(r.tensors)} tensors, {len(r.fields)} fields, alignment {r.alignment}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"GGUFReader on herd {t}: {e!r}")
            print(f"  GGUFReader FAILED on {out}: {e!r}")
            continue
        herd_files[t] = out
        for label, ref in refs[t]:
            if not ref.exists():
                print(f"  {ref} missing (run make_gguf_fixtures.py with LLAMA_QUANTIZE)")
                continue
            c = compare(out, ref, label, source)
            summary.append((t, label, c))

    # c
    print("\n=== llama.cpp's loader on herd's GGUFs")
    if "BF16" in herd_files:
        requant = args.work / "requant-q8_0.gguf"
        res = sh([lq, herd_files["BF16"], requant, "Q8_0", "2"])
        log = res.stdout + res.stderr
        if res.returncode != 0:
            failures.append(f"llama-quantize on herd-bf16.gguf: rc {res.returncode}")
            print(f"  llama-quantize REJECTED herd-bf16.gguf (rc {res.returncode}); log verbatim:\n{log}")
        else:
            for l in log.splitlines():
                if l.startswith("llama_model_loader: - type") or "loaded meta data" in l or "size =" in l and "model" in l:
                    print(f"    {l.strip()}")
            print("  llama-quantize accepted herd-bf16.gguf (rc 0)")
            c = compare(requant, lq_q8, "llama-quantize Q8_0 of model-bf16.gguf", source)
            summary.append(("requant Q8_0 of herd BF16", "llama-quantize Q8_0", c))
    if (bin_dir / "llama-completion").is_file():
        print(f"\n  llama-completion: prompt {PROMPT!r}, -n {N_PREDICT} --temp 0 (-nr)")
        models = [(f"herd {t}", f) for t, f in herd_files.items()] + [
            ("llama.cpp Q4_K_M", fx / "model-q4_k_m.gguf"), ("llama.cpp Q6_K", fx / "model-q6_k.gguf"),
            ("llama.cpp BF16", fx / "model-bf16.gguf")]
        for label, f in models:
            if not f.exists():
                continue
            print(f"  -- {label}: {f}")
            a = generate_llama(bin_dir, f)
            b = generate_herd(args.herd, f)
            gen.append((label, a is not None, a, b))
    else:
        print("  (no llama-completion beside llama-quantize: generation skipped)")

    exe = args.llama_greedy or (bin_dir.parent.parent / "llama_greedy")
    d_rows = []
    if Path(exe).is_file():
        print(f"\n=== d. llama.cpp (llama_greedy, no extra buffer types) vs herd vs transformers, same file; {N_PREDICT} greedy tokens")
        d_rows = section_d(args, herd_files, fx, Path(exe).resolve())
    else:
        print(f"\n=== d. skipped: no llama_greedy at {exe} (build it: see tools/reference/llama_greedy.cpp)")

    print("\n=== summary")
    for t, label, c in summary:
        ns, nb = c["same_blocks"], c["blocks"]
        print(f"  {t:26s} vs {label:26s} type differences {len(c['type_diffs']):2d}; F32/BF16 tensors identical {c['plain_same']}/{c['plain']}"
              + (f"; quantized blocks identical {ns}/{nb} ({100 * ns / nb:.2f}%)" if nb else "")
              + f"; max|Δ| dequantized {c['max_abs']:.2e} ({c['max_rel']:.2e} of max|w|)"
              + (f"; RMS error vs bf16 herd {c['rms_herd']:.3e} / llama.cpp {c['rms_llama']:.3e}" if c["rms_llama"] else ""))
    for r in d_rows:
        print("  d " + "  ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    for label, ok, a, b in gen:
        # text only: llama-completion's stdout of a byte-level vocab is not a reliable token record (section d compares ids)
        print(f"  llama-completion on {label:18s} {'accepted' if ok else 'REJECTED'}; text llama.cpp {a!r}, herd {b!r}")
    if failures:
        print("  FAILURES:\n    " + "\n    ".join(failures))
        sys.exit(1)
    print("  every herd GGUF parsed and every llama.cpp run accepted it")


if __name__ == "__main__":
    main()
