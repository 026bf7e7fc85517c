#!/usr/bin/env bash
# The CUDA checks, run in one go on the GPU machine (which has CUDA 13, PyTorch and
# transformers but no Rust): from the repository root, with the binaries that
# `tools/cuda/build.sh tests` made here in target/cuda-bin (herd and the herd-model test binary
# `it`; xz-compressed if they end in .xz). A few minutes of GPU time:
#
#   1. the parity suite with HERD_TEST_DEVICE=cuda: every text fixture in f32 at 1e-4 on every
#      position (full pass, one-token decode, chunked prefill, greedy), bf16 compute at its
#      stated bounds, MoE decode routed on the device (with stacked adapters too), the vision
#      tower and early fusion; then batched steps against each sequence alone, and long context;
#   2. a Scout-shaped slice (tools/cuda/scout_slice.py: full width, 16 experts, vocab 202048,
#      `SLICE_LAYERS` of the 48 layers, bf16, random weights) timed in herd — decode at batch 1,
#      prefill of 2048 tokens — with herd's CUDA kernels, without (cuBLAS only) and with
#      cudarc's event tracking off (HERD_CUDA_EVENT_TRACKING=off), and in
#      transformers on the same folder and GPU; then one table and one JSON line.
#
# Environment: HERD_CUDA_BIN (default target/cuda-bin), SLICE_LAYERS (4), SLICE_DIR
# (/tmp/scout-slice), OUT (where logs go; the device tool sets it), SKIP_TRIMMED (set when
# tools/cuda/device-tree.sh trimmed the large fixtures).
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${HERD_CUDA_BIN:-target/cuda-bin}
out=${OUT:-/tmp/herd-cuda-check}
layers=${SLICE_LAYERS:-4}
slice=${SLICE_DIR:-/tmp/scout-slice}
mkdir -p "$out" /tmp/herd-cuda-bin
for f in "$bin"/*; do
    case "$f" in
        *.xz) xz -dc "$f" > "/tmp/herd-cuda-bin/$(basename "$f" .xz)" ;;
        *) cp "$f" /tmp/herd-cuda-bin/ ;;
    esac
done
chmod +x /tmp/herd-cuda-bin/*
bin=/tmp/herd-cuda-bin

# libcuda comes with the driver; cuBLAS, cuRAND, NVRTC and the CUDA runtime from the NVIDIA
# wheels beside PyTorch (herd opens them at run time).
wheel_libs=$(python3 - <<'PY'
import glob, os
import nvidia
dirs = set()
for base in nvidia.__path__:
    for lib in glob.glob(os.path.join(base, "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$wheel_libs:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
echo "== parity suite on the GPU (HERD_TEST_DEVICE=cuda)"
# Without the large fixtures (tools/cuda/device-tree.sh trim), the gguf tests that read them
# are skipped.
skip=()
if [ -n "${SKIP_TRIMMED:-}" ]; then
    skip=(--skip gguf_parity::converter_bf16 --skip gguf_parity::safetensors_folder)
fi
HERD_TEST_DEVICE=cuda "$bin/it" --test-threads 1 --nocapture "${skip[@]}" \
    parity:: device_routing:: vision::image_prompt vision::vision_tiny 2>&1 | tee "$out/parity.log" \
    | grep -E "max \||max abs|test result|FAILED|panicked|error" || true
grep -q "test result: ok" "$out/parity.log" || status=1

echo "== batching and long context on the GPU"
# A batched step against each sequence alone (every cache dtype a GPU takes; on a GPU a lone
# decode row takes herd's gemv and device routing, batched rows cuBLAS and, past 8, host
# routing), and the long-context tests.
HERD_TEST_DEVICE=cuda "$bin/it" --test-threads 1 --nocapture batch:: long_context:: 2>&1 \
    | tee "$out/batch.log" | grep -E "max \||tolerance|test result|FAILED|panicked|error" || true
grep -q "test result: ok" "$out/batch.log" || status=1

echo "== Scout slice: $layers layers at full width, bf16, random weights"
if [ ! -f "$slice/config.json" ]; then
    python3 tools/cuda/scout_slice.py make "$slice" --layers "$layers" || exit 1
fi
bench=(bench --model "$slice" --device cuda --dtype bf16 -p 2048 -n 64 -r 3 --json)
"$bin/herd" "${bench[@]}" > "$out/herd.json" 2> "$out/herd.err" || { cat "$out/herd.err"; status=1; }
HERD_CUDA_KERNELS=off "$bin/herd" "${bench[@]}" -p 0 > "$out/herd-cublas.json" 2> "$out/herd-cublas.err" \
    || { cat "$out/herd-cublas.err"; status=1; }
HERD_CUDA_EVENT_TRACKING=off "$bin/herd" "${bench[@]}" -p 0 > "$out/herd-untracked.json" \
    2> "$out/herd-untracked.err" || { cat "$out/herd-untracked.err"; status=1; }
python3 tools/cuda/scout_slice.py bench "$slice" --gen 64 --prompt 2048 > "$out/transformers.json" \
    || status=1
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(f"{out}/{name}").read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": str(e)}
herd, cublas, hf = load("herd.json"), load("herd-cublas.json"), load("transformers.json")
untracked = load("herd-untracked.json")
def result(run, kind):
    return next((r["tok_s"] for r in run.get("results", []) if r["kind"] == kind), None)
bw = hf.get("copy_bandwidth_bytes_s")
per_token = herd.get("decode_bytes_per_token")
rows = [
    ("herd decode tok/s (batch 1)", result(herd, "tg")),
    ("herd decode, cuBLAS only", result(cublas, "tg")),
    ("herd decode, event tracking off", result(untracked, "tg")),
    ("transformers decode tok/s", hf.get("tg_tok_s")),
    ("herd prefill tok/s (2048)", result(herd, "pp")),
    ("transformers prefill tok/s", hf.get("pp_tok_s")),
]
summary = {"bench": "herd-cuda-slice", "gpu": hf.get("gpu"), "decode_bytes_per_token": per_token,
           "copy_bandwidth_bytes_s": bw}
for name, v in rows:
    print(f"| {name:32} | {v if v is None else round(v, 1)!s:>10} |")
tg, hf_tg = result(herd, "tg"), hf.get("tg_tok_s")
pp, hf_pp = result(herd, "pp"), hf.get("pp_tok_s")
if tg and per_token and bw:
    summary["hbm_use"] = per_token * tg / bw
    print(f"| {'herd decode HBM use':32} | {summary['hbm_use'] * 100:9.1f}% |")
if tg and hf_tg:
    summary["decode_vs_transformers"] = tg / hf_tg
    print(f"| {'decode ÷ transformers':32} | {tg / hf_tg:10.2f} |")
if pp and hf_pp:
    summary["prefill_vs_transformers"] = pp / hf_pp
    print(f"| {'prefill ÷ transformers':32} | {pp / hf_pp:10.2f} |")
summary.update({"herd_tg": tg, "herd_tg_cublas": result(cublas, "tg"),
                "herd_tg_untracked": result(untracked, "tg"), "herd_pp": pp,
                "transformers_tg": hf_tg, "transformers_pp": hf_pp})
print(json.dumps(summary))
PY
exit $status
