#!/usr/bin/env bash
# Builds herd with the `cuda` feature on a machine with no GPU and no system CUDA.
#
# nvcc and the CUDA headers come from PyPI (NVIDIA's own wheels, CUDA 13.0 to match the GPU
# machine's driver 580) into a venv; candle's kernels compile with it to PTX (loaded by the
# driver at run time) and to sm_90 machine code (the statically linked GGUF/MoE kernels).
# libcuda, cuBLAS, cuRAND and NVRTC are opened at run time (cudarc's dynamic loading), so the
# only CUDA library the binary links is libcudart.so.13, which tools/cuda/check.sh finds on the
# GPU machine.
#
#   tools/cuda/build.sh                 # release `herd` with --features cuda → target/cuda/release/herd
#   tools/cuda/build.sh check           # clippy (a full check) with --features cuda: what CI runs
#   tools/cuda/build.sh tests           # also the herd-model test binary, for check.sh
#
# Environment: HERD_CUDA_VENV (default target/cuda-venv), CUDA_COMPUTE_CAP (default 90: H100/H200).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=${HERD_CUDA_VENV:-target/cuda-venv}
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -m pip show nvidia-cuda-nvcc 2>/dev/null | grep -q '^Version: 13.0.88$'; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
fi
cuda_home=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(nvidia.__path__[0], "cu13"))')
# The wheels ship only versioned libraries; the linker's `-lcudart` wants the plain name.
ln -sf libcudart.so.13 "$cuda_home/lib/libcudart.so"

# Linking (not `check`): candle links cuBLAS, cuRAND and NVRTC (their wheels give the right
# sonames) and the driver's libcuda.so.1, which only a GPU machine has: a stub with cudarc's
# driver entry points stands in for it here; the real one is found at run time.
link_libraries() {
    local link=target/cuda-link
    if ! "$venv/bin/python" -m pip show nvidia-cublas 2>/dev/null | grep -q '^Version: 13.0.2.14$'; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
            nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
    fi
    mkdir -p "$link"
    for lib in cublas cublasLt nvrtc curand; do
        ln -sf "$(ls "$cuda_home"/lib/lib$lib.so.[0-9]* | head -1)" "$link/lib$lib.so"
    done
    cargo fetch --locked -q
    local cudarc
    cudarc=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'cudarc-0.19.10' | head -1)
    grep -o '^pub unsafe fn cu[A-Z][A-Za-z0-9_]*' "$cudarc/src/driver/sys/mod.rs" \
        | sed 's/^pub unsafe fn \(.*\)/void \1(void) {}/' | sort -u > "$link/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda-stub.c"
    export LIBRARY_PATH="$PWD/$link:$LIBRARY_PATH"
}

export CUDA_HOME=$cuda_home CUDA_PATH=$cuda_home
export PATH="$cuda_home/bin:$PATH"
export LIBRARY_PATH="$cuda_home/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | tail -1

# Release builds go to their own target dir: a CUDA `herd` links libcuda and would otherwise
# replace the CPU build at target/release/herd.
case "${1:-release}" in
    check)
        cargo clippy --locked -p herd-cli -p herd-model --features herd-cli/cuda --all-targets \
            -- -D warnings
        ;;
    release)
        link_libraries
        cargo build --locked --release --target-dir target/cuda -p herd-cli --bin herd --features herd-cli/cuda
        ;;
    tests)
        # herd and the herd-model test binary, stripped and compressed into target/cuda-bin
        # for tools/cuda/check.sh (the device tool carries at most 64 MiB with the repo).
        link_libraries
        cargo build --locked --release --target-dir target/cuda -p herd-cli --bin herd --features herd-cli/cuda
        tests=$(cargo test --locked --release --target-dir target/cuda -p herd-model --features cuda --no-run \
            --message-format=json \
            | "$venv/bin/python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])')
        rm -rf target/cuda-bin && mkdir -p target/cuda-bin
        for exe in target/cuda/release/herd "$tests"; do
            strip -o "target/cuda-bin/$(basename "$exe" | sed 's/-[0-9a-f]*$//')" "$exe"
        done
        xz -T2 -6 target/cuda-bin/*
        ls -la target/cuda-bin
        ;;
    *) echo "usage: $0 [release|check|tests]" >&2; exit 2 ;;
esac
