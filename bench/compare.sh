#!/usr/bin/env bash
# herd vs llama.cpp (and mistral.rs where it runs) on the same files, the same threads, in the
# same run, alternating engines test by test:
#
#   bench/compare.sh          # ~35 min on 2 cores the first time (llama.cpp build, conversion)
#
# 1. builds llama.cpp's llama-bench and llama-quantize from the source vendored in the PyPI
#    sdist of llama-cpp-python (pinned below, sha256 checked), CPU only;
# 2. makes the bench model with herd's own generator (`herd synth --preset bench-moe-2.7b`:
#    Scout's structure scaled down, 16 experts + shared, random bf16 weights);
# 3. converts it with llama.cpp's converter (convert_hf_to_gguf.py) to BF16, and quantizes that
#    with llama-quantize to Q8_0 and Q4_K_M — the files llama.cpp users have;
# 4. runs `llama-bench` and `herd bench` (KV cache in f16, as llama-bench's) on each file,
#    `-p $P -n $N -t $THREADS`, taking turns one repetition at a time for $REPS rounds (the
#    table has each engine's mean), plus a decode test at depth $DEPTH on Q4_K_M (KV cache f16, then both engines
#    with a Q8_0 cache, and each engine's depth ÷ depth-0 ratio) and a BF16 prefill at
#    `--matmul-precision medium` (llama.cpp's rounding of activations); then mistral.rs (PyPI
#    `mistralrs`) on the Q4_K_M file, printing its error where it does not run;
# 5. prints each figure with the ratio herd ÷ llama.cpp, then one JSON line.
#
# Environment: THREADS (2), REPS (3), P (512), N (128), DEPTH (8192; 0 skips), DEPTH_REPS (3), WORK (where the
# models, the venv and the llama.cpp build go; ~16 GB; default /tmp/herd-compare), HERD (a
# built herd binary; default: cargo build --release), LLAMA_SRC / LLAMA_BUILD (an unpacked
# sdist's vendor/llama.cpp and a build dir configured from it, to reuse), PYTHON (a Python with the converter's requirements; default: a venv
# made from tools/reference/requirements*.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

THREADS=${THREADS:-2}
REPS=${REPS:-3}
P=${P:-512}
N=${N:-128}
DEPTH=${DEPTH:-8192}
DEPTH_REPS=${DEPTH_REPS:-3}
WORK=${WORK:-/tmp/herd-compare}
LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_COMMIT=0c1e57098
mkdir -p "$WORK"
log() { printf '\n== %s\n' "$*" >&2; }

# --- herd -------------------------------------------------------------------------------
# The table names the commit only for a herd this checkout builds; a given binary by its path.
if [ -n "${HERD:-}" ]; then HERD_LABEL="herd binary $HERD"; else HERD_LABEL="herd $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; fi
HERD=${HERD:-$ROOT/target/release/herd}
if [ ! -x "$HERD" ]; then
    log "building herd (release)"
    cargo build --release -p herd-cli
fi

# --- Python for the converter (and mistral.rs) ---------------------------------------------
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    PYTHON=$WORK/venv/bin/python
    if [ ! -x "$PYTHON" ]; then
        log "Python venv for llama.cpp's converter ($WORK/venv)"
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install --quiet -r tools/reference/requirements.txt -r tools/reference/requirements-gguf.txt
    fi
fi
BUILD_TOOLS=$WORK/build-tools
if [ ! -x "$BUILD_TOOLS/bin/cmake" ]; then
    log "cmake and ninja (PyPI) in $BUILD_TOOLS"
    python3 -m venv "$BUILD_TOOLS"
    "$BUILD_TOOLS/bin/pip" install --quiet cmake==3.31.6 ninja==1.13.2
fi

# --- llama.cpp from the llama-cpp-python sdist ------------------------------------------
SDIST_DIR=$WORK/llama-cpp-python
LLAMA_SRC=${LLAMA_SRC:-$SDIST_DIR/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp}
if [ ! -f "$LLAMA_SRC/convert_hf_to_gguf.py" ]; then
    log "llama-cpp-python $LCP_VERSION sdist"
    "$BUILD_TOOLS/bin/pip" download --quiet --no-binary llama-cpp-python --no-deps \
        "llama-cpp-python==$LCP_VERSION" -d "$WORK/sdist"
    tarball=$WORK/sdist/llama_cpp_python-$LCP_VERSION.tar.gz
    echo "$LCP_SHA256  $tarball" | sha256sum -c - >&2
    mkdir -p "$SDIST_DIR"
    tar -xzf "$tarball" -C "$SDIST_DIR"
fi
LLAMA_BUILD=${LLAMA_BUILD:-$WORK/llama-build}
if [ ! -x "$LLAMA_BUILD/bin/llama-bench" ] || [ ! -x "$LLAMA_BUILD/bin/llama-quantize" ]; then
    log "building llama-bench and llama-quantize (CPU, native; ~10 min on 2 cores)"
    PATH=$BUILD_TOOLS/bin:$PATH cmake -S "$LLAMA_SRC" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON \
        -DGGML_OPENMP=ON -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT=$LLAMA_COMMIT >&2
    PATH=$BUILD_TOOLS/bin:$PATH cmake --build "$LLAMA_BUILD" -j"$(nproc)" --target llama-bench llama-quantize >&2
fi
LLAMA_BENCH=$LLAMA_BUILD/bin/llama-bench
LLAMA_QUANTIZE=$LLAMA_BUILD/bin/llama-quantize

# --- the model and its GGUF files --------------------------------------------------------
MODEL=$WORK/bench-moe-2.7b
if [ ! -f "$MODEL/model.safetensors" ]; then
    log "herd synth --preset bench-moe-2.7b"
    "$HERD" synth --preset bench-moe-2.7b --out "$MODEL" --quiet
fi
if [ ! -f "$WORK/bf16.gguf" ]; then
    log "llama.cpp converter: BF16 GGUF"
    # The converter names the tokenizer's pre-tokenizer by hashing the ids it gives a test
    # string; the synth model's byte-level tokenizer (GPT-2's ByteLevel with its regex) has no
    # known hash, so a wrapper answers "gpt-2" for an unknown one (tokenization never enters
    # llama-bench, which feeds random ids). The vendored files are not modified.
    cat >"$WORK/convert.py" <<'EOF_PY'
import runpy, sys
llama_cpp, argv = sys.argv[1], sys.argv[2:]
sys.path[:0] = [llama_cpp, llama_cpp + "/gguf-py"]
import conversion.base as base
orig = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        print("compare.sh: pre-tokenizer hash not known (herd synth's byte-level tokenizer): gpt-2", file=sys.stderr)
        return "gpt-2"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
# llama.cpp refuses a BPE vocabulary without merges, and the synth tokenizer has none (its
# 202048 ids are bytes, specials and fillers): one merge of two byte tokens it holds.
import gguf
orig_add = gguf.SpecialVocab.add_to_gguf
def add_to_gguf(self, gw, quiet=False):
    if not self.merges:
        self.merges = ["\u0120 \u0120"]
    return orig_add(self, gw, quiet=quiet)
gguf.SpecialVocab.add_to_gguf = add_to_gguf
sys.argv = [llama_cpp + "/convert_hf_to_gguf.py"] + argv
runpy.run_path(llama_cpp + "/convert_hf_to_gguf.py", run_name="__main__")
EOF_PY
    "$PYTHON" "$WORK/convert.py" "$LLAMA_SRC" "$MODEL" --outtype bf16 --outfile "$WORK/bf16.gguf" >&2
fi
for q in Q8_0 Q4_K_M; do
    f=$WORK/$(tr '[:upper:]' '[:lower:]' <<<"$q").gguf
    if [ ! -f "$f" ]; then
        log "llama-quantize $q"
        "$LLAMA_QUANTIZE" "$WORK/bf16.gguf" "$f" "$q" "$THREADS" >&2
    fi
done

# --- runs ---------------------------------------------------------------------------------
have_time=0
if /usr/bin/time -f %M true 2>/dev/null; then have_time=1; fi
# Runs a command, its stdout to $1; prints its peak RSS in bytes (or "null").
measure() {
    local out=$1; shift
    local rc=0
    if [ $have_time = 1 ]; then
        /usr/bin/time -f %M -o "$out.rss" "$@" >"$out" 2>"$out.err" || rc=$?
        if [ $rc = 0 ]; then echo $(($(tail -1 "$out.rss") * 1024)); else echo null; fi
    else
        "$@" >"$out" 2>"$out.err" || rc=$?
        echo null
    fi
    return $rc
}

# llama.cpp's weight repacking (its AMX path on this CPU) crashes this commit on quantized
# files during prompt processing (SIGSEGV; without repacking it runs): a failed run is retried
# with `--repack 0`, and the table says so.
llama_run() { # file out args...
    local file=$1 out=$2; shift 2
    local rss
    if rss=$(measure "$out" "$LLAMA_BENCH" -m "$file" -t "$THREADS" -r "$REPS" -o json "$@"); then
        echo "$rss repack"
    elif rss=$(measure "$out" "$LLAMA_BENCH" -m "$file" -t "$THREADS" -r "$REPS" -o json --repack 0 "$@"); then
        echo "$rss no-repack"
    else
        echo "null failed"
    fi
}
herd_run() { # file out args...  (herd reports its own peak RSS, after its bandwidth probe's
    # buffer is freed and the peak reset; the wall-clock RSS of the process would count it)
    local file=$1 out=$2; shift 2
    # llama-bench keeps its KV cache in f16 (-ctk/-ctv default): herd the same, unless KV says.
    "$HERD" -t "$THREADS" bench --model "$file" --kv-dtype "${KV:-f16}" -r "$REPS" --json "$@" >"$out" 2>"$out.err" || true
}

RESULTS=$WORK/results
mkdir -p "$RESULTS"
# Each run's rounds are read back by glob: no earlier run's files may stay.
rm -f "$RESULTS"/*.json "$RESULTS"/*.json.err "$RESULTS"/*.json.rss
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null") print b; else if (b == "null" || a + 0 >= b + 0) print a; else print b }'; }
rows=()
json_rows=()
jq_py() { "$PYTHON" -c "$1" "${@:2}"; }
# Mean speed over a run's rounds (a glob of llama-bench JSON files) for a test (n_prompt,
# n_gen, n_depth), or null.
llama_speed() {
    jq_py 'import glob,json,sys
speeds = []
for f in sorted(glob.glob(sys.argv[1])):
    try:
        rows = json.load(open(f))
    except Exception:
        continue
    speeds += [r["avg_ts"] for r in rows if r["n_prompt"] == int(sys.argv[2]) and r["n_gen"] == int(sys.argv[3]) and r.get("n_depth", 0) == int(sys.argv[4])][:1]
print(sum(speeds) / len(speeds) if speeds else "null")' "$@"
}
herd_speed() { # glob kind n depth: mean over the rounds
    jq_py 'import glob,json,sys
speeds = []
for f in sorted(glob.glob(sys.argv[1])):
    try:
        line = [l for l in open(f) if l.startswith("{")][-1]
        rows = json.loads(line)["results"]
    except Exception:
        continue
    speeds += [r["tok_s"] for r in rows if r["kind"] == sys.argv[2] and r["n_tokens"] == int(sys.argv[3]) and r["depth"] == int(sys.argv[4])][:1]
print(sum(speeds) / len(speeds) if speeds else "null")' "$@"
}
herd_field() { # glob name: the largest value over the rounds (peak RSS; bandwidth: the best probe)
    jq_py 'import glob,json,sys
values = []
for f in sorted(glob.glob(sys.argv[1])):
    try:
        line = [l for l in open(f) if l.startswith("{")][-1]
        v = json.loads(line).get(sys.argv[2])
    except Exception:
        continue
    if v is not None:
        values.append(v)
print(json.dumps(max(values)) if values else "null")' "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null" || b == "null" || b == 0) print "—"; else printf "%.2f", a / b }'; }
fmt() { awk -v a="$1" 'BEGIN { if (a == "null") print "—"; else printf "%.1f", a }'; }
gb() { awk -v a="$1" 'BEGIN { if (a == "null") print "—"; else printf "%.2f", a / 1e9 }'; }

for fmt_name in BF16 Q8_0 Q4_K_M; do
    file=$WORK/$(tr '[:upper:]' '[:lower:]' <<<"$fmt_name").gguf
    # The engines take turns, one repetition each, $REPS rounds (and the decode at depth
    # $DEPTH_REPS rounds): the host's memory bandwidth drifts over minutes (46–73 GB/s within
    # one run here), and whole runs one engine after the other put decode figures ~30 % apart.
    l_rss=null l_mode=repack
    for i in $(seq 1 "$REPS"); do
        log "$fmt_name: round $i of $REPS: llama-bench"
        read -r rss mode < <(REPS=1 llama_run "$file" "$RESULTS/llama-$fmt_name.r$i.json" -p "$P" -n "$N")
        l_rss=$(max_of "$l_rss" "$rss")
        if [ "$mode" != repack ]; then l_mode=$mode; fi
        log "$fmt_name: round $i of $REPS: herd bench"
        REPS=1 herd_run "$file" "$RESULTS/herd-$fmt_name.r$i.json" -p "$P" -n "$N"
        if [ "$fmt_name" = BF16 ]; then
            # llama.cpp rounds activations to bf16 before a product with bf16 weights; herd's
            # default keeps the f32 product. `--matmul-precision medium` is llama.cpp's
            # arithmetic: the same prefill once more at that level, in the same round.
            log "$fmt_name: round $i of $REPS: herd bench --matmul-precision medium"
            REPS=1 herd_run "$file" "$RESULTS/herd-$fmt_name-medium.r$i.json" -p "$P" -n 0 --matmul-precision medium
        fi
    done
    h_rss=$(herd_field "$RESULTS/herd-$fmt_name.r*.json" peak_rss_bytes)
    depths=(0)
    if [ "$fmt_name" = Q4_K_M ] && [ "$DEPTH" -gt 0 ]; then
        # Decode after $DEPTH positions of context, with the f16 cache and with both caches in
        # Q8_0 blocks (llama.cpp: -ctk/-ctv q8_0, which needs its flash attention for V; herd:
        # --kv-dtype q8_0). Each process decodes at depth 0 and at $DEPTH (each repetition
        # first prefills the depth, untimed), so each engine's depth ÷ depth-0 ratio comes from
        # one process, the same minute.
        depths=(0 "$DEPTH")
        for i in $(seq 1 "$DEPTH_REPS"); do
            log "$fmt_name: round $i of $DEPTH_REPS: llama-bench, decode at depth $DEPTH"
            read -r _ _ < <(REPS=1 llama_run "$file" "$RESULTS/llama-$fmt_name-d$DEPTH.r$i.json" -p 0 -n "$N" -d "0,$DEPTH")
            log "$fmt_name: round $i of $DEPTH_REPS: herd bench, decode at depth $DEPTH"
            REPS=1 herd_run "$file" "$RESULTS/herd-$fmt_name-d$DEPTH.r$i.json" -p 0 -n "$N" -d "0,$DEPTH"
            log "$fmt_name: round $i of $DEPTH_REPS: llama-bench, decode at depth $DEPTH, KV cache q8_0"
            read -r _ _ < <(REPS=1 llama_run "$file" "$RESULTS/llama-$fmt_name-d$DEPTH-q8.r$i.json" -p 0 -n "$N" -d "0,$DEPTH" -ctk q8_0 -ctv q8_0 -fa on)
            log "$fmt_name: round $i of $DEPTH_REPS: herd bench, decode at depth $DEPTH, --kv-dtype q8_0"
            REPS=1 KV=q8_0 herd_run "$file" "$RESULTS/herd-$fmt_name-d$DEPTH-q8.r$i.json" -p 0 -n "$N" -d "0,$DEPTH"
        done
    fi
    for d in "${depths[@]}"; do
        for kind in pp tg; do
            if [ $kind = pp ]; then n=$P; lp=$P; lg=0; else n=$N; lp=0; lg=$N; fi
            if [ "$d" -gt 0 ] && [ $kind = pp ]; then continue; fi
            suffix=""
            if [ "$d" -gt 0 ]; then suffix="-d$d"; fi
            h=$(herd_speed "$RESULTS/herd-$fmt_name$suffix.r*.json" $kind "$n" "$d")
            l=$(llama_speed "$RESULTS/llama-$fmt_name$suffix.r*.json" "$lp" "$lg" "$d")
            test_name="$kind$n"
            if [ "$d" -gt 0 ]; then test_name="$test_name @ d$d"; fi
            rows+=("$(printf '| %-7s | %-22s | %12s | %12s | %7s |' "$fmt_name" "$test_name" "$(fmt "$h")" "$(fmt "$l")" "$(ratio "$h" "$l")")")
            json_rows+=("{\"format\":\"$fmt_name\",\"test\":\"$test_name\",\"herd_tok_s\":$h,\"llama_cpp_tok_s\":$l}")
        done
    done
    if [ "${#depths[@]}" -gt 1 ]; then
        # Decode at depth with both caches in Q8_0 blocks, then each engine's decode at depth
        # as a fraction of its decode at 0 (the issue's "within 15 %").
        h=$(herd_speed "$RESULTS/herd-$fmt_name-d$DEPTH-q8.r*.json" tg "$N" "$DEPTH")
        l=$(llama_speed "$RESULTS/llama-$fmt_name-d$DEPTH-q8.r*.json" 0 "$N" "$DEPTH")
        test_name="tg$N @ d$DEPTH, KV q8_0"
        rows+=("$(printf '| %-7s | %-22s | %12s | %12s | %7s |' "$fmt_name" "$test_name" "$(fmt "$h")" "$(fmt "$l")" "$(ratio "$h" "$l")")")
        json_rows+=("{\"format\":\"$fmt_name\",\"test\":\"tg$N @ d$DEPTH\",\"kv\":\"q8_0\",\"herd_tok_s\":$h,\"llama_cpp_tok_s\":$l}")
        for kv in f16 q8_0; do
            # Each depth process decodes at depth 0 too, in the same minute: the ratio's two
            # figures see the same host.
            if [ $kv = f16 ]; then suffix="-d$DEPTH"; else suffix="-d$DEPTH-q8"; fi
            hd=$(herd_speed "$RESULTS/herd-$fmt_name$suffix.r*.json" tg "$N" "$DEPTH")
            ld=$(llama_speed "$RESULTS/llama-$fmt_name$suffix.r*.json" 0 "$N" "$DEPTH")
            h0=$(herd_speed "$RESULTS/herd-$fmt_name$suffix.r*.json" tg "$N" 0)
            l0=$(llama_speed "$RESULTS/llama-$fmt_name$suffix.r*.json" 0 "$N" 0)
            rows+=("$(printf '| %-7s | %-22s | %12s | %12s | %7s |' "$fmt_name" "d$DEPTH / d0, KV $kv" "$(ratio "$hd" "$h0")" "$(ratio "$ld" "$l0")" "")")
            json_rows+=("{\"format\":\"$fmt_name\",\"test\":\"tg$N d$DEPTH / d0\",\"kv\":\"$kv\",\"herd\":$(ratio "$hd" "$h0" | sed 's/—/null/'),\"llama_cpp\":$(ratio "$ld" "$l0" | sed 's/—/null/')}")
        done
    fi
    if [ "$fmt_name" = BF16 ]; then
        h=$(herd_speed "$RESULTS/herd-$fmt_name-medium.r*.json" pp "$P" 0)
        l=$(llama_speed "$RESULTS/llama-$fmt_name.r*.json" "$P" 0 0)
        rows+=("$(printf '| %-7s | %-22s | %12s | %12s | %7s |' "$fmt_name" "pp$P medium" "$(fmt "$h")" "$(fmt "$l")" "$(ratio "$h" "$l")")")
        json_rows+=("{\"format\":\"$fmt_name\",\"test\":\"pp$P\",\"herd_matmul_precision\":\"medium\",\"herd_tok_s\":$h,\"llama_cpp_tok_s\":$l}")
    fi
    bw=$(herd_field "$RESULTS/herd-$fmt_name.r*.json" bandwidth_bytes_s)
    bpt=$(herd_field "$RESULTS/herd-$fmt_name.r*.json" decode_bytes_per_token)
    rows+=("$(printf '| %-7s | %-22s | %12s | %12s | %7s |' "$fmt_name" "peak RSS GB" "$(gb "$h_rss")" "$(gb "$l_rss")" "$(ratio "$h_rss" "$l_rss")")")
    json_rows+=("{\"format\":\"$fmt_name\",\"test\":\"peak_rss_bytes\",\"herd\":$h_rss,\"llama_cpp\":$l_rss,\"llama_cpp_mode\":\"$l_mode\",\"herd_bandwidth_bytes_s\":$bw,\"herd_decode_bytes_per_token\":$bpt}")
    if [ "$l_mode" = no-repack ]; then
        rows+=("| $fmt_name | llama.cpp: with weight repacking it crashed (SIGSEGV); these are its --repack 0 figures |")
    elif [ "$l_mode" != repack ]; then
        rows+=("| $fmt_name | llama.cpp failed: $(tail -c 300 "$RESULTS/llama-$fmt_name.r1.json.err" | tr '\n' ' ' | cut -c1-120) |")
    fi
done

# --- mistral.rs -------------------------------------------------------------------------
log "mistral.rs (PyPI mistralrs) on Q4_K_M"
mistral_note="not run"
if timeout 600 "$PYTHON" -m pip install --quiet mistralrs >"$RESULTS/mistralrs-install.log" 2>&1; then
    if timeout 900 "$PYTHON" - "$WORK" "$N" >"$RESULTS/mistralrs.out" 2>"$RESULTS/mistralrs.err" <<'EOF'
import sys, time
from mistralrs import Runner, Which, CompletionRequest
work, n = sys.argv[1], int(sys.argv[2])
runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=work, quantized_filename="q4_k_m.gguf"))
start = time.time()
res = runner.send_completion_request(CompletionRequest(model="m", prompt="hello", max_tokens=n, temperature=0.0))
print(f"mistral.rs: {n / (time.time() - start):.2f} tok/s (wall, prompt included)")
EOF
    then
        mistral_note=$(tail -1 "$RESULTS/mistralrs.out")
    else
        mistral_note="mistral.rs failed: $(grep -v '^\s*$' "$RESULTS/mistralrs.err" | tail -1 | cut -c1-200)"
    fi
else
    mistral_note="pip install mistralrs failed: $(tail -1 "$RESULTS/mistralrs-install.log" | cut -c1-200)"
fi

# --- report -------------------------------------------------------------------------------
echo
echo "bench-moe-2.7b · $THREADS threads · -p $P -n $N -r $REPS · KV cache f16 unless a row says q8_0 · $HERD_LABEL · llama.cpp $LLAMA_COMMIT (llama-cpp-python $LCP_VERSION sdist)"
echo "herd's bandwidth probe: $(gb "$(herd_field "$RESULTS/herd-Q4_K_M.r*.json" bandwidth_bytes_s)") GB/s (the best of its rounds)"
echo
printf '| %-7s | %-22s | %12s | %12s | %7s |\n' format test "herd" "llama.cpp" "ratio"
printf '| %-7s | %-22s | %12s | %12s | %7s |\n' ------- ---------------------- ------------ ------------ -------
printf '%s\n' "${rows[@]}"
echo
echo "KV q8_0: both caches in ggml's Q8_0 blocks (herd --kv-dtype q8_0; llama.cpp -ctk q8_0 -ctv q8_0 -fa on). d$DEPTH / d0: decode at depth over decode at 0, each engine against itself, both from the depth run (one process, the same minute; herd's target: ≥ 0.85)."
echo "pp$P medium: herd with --matmul-precision medium (activations rounded to bf16 before products with bf16 weights, as llama.cpp computes them); the other herd rows keep the f32 product."
echo "$mistral_note"
printf '{"bench":"compare","model":"bench-moe-2.7b","threads":%s,"p":%s,"n":%s,"reps":%s,"mistralrs":%s,"rows":[%s]}\n' \
    "$THREADS" "$P" "$N" "$REPS" "$("$PYTHON" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$mistral_note")" \
    "$(IFS=,; echo "${json_rows[*]}")"
