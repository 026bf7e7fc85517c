// Matrix-vector products for decode on the GPU: y[r, n] = Σ_k W[e(r)][n][k] · x[r][k].
//
// At batch 1 a token's work is one pass over the weights, so these kernels are written to
// stream W once at the memory bound: one warp per output row, 16-byte loads, UNROLL loads in
// flight per lane before any arithmetic, f32 accumulation, a warp shuffle to reduce. x (a few
// KiB) stays in L1/L2 for every warp that reads it.
//
// `moe_*` reads the expert e(r) from `ids` on the device, so routing never leaves the GPU:
// W is every expert's matrix stacked, [E, N, K]. The plain kernels take e(r) = 0.
//
// bf16 is handled as its bit pattern (unsigned short): no CUDA headers are needed, and the
// rounding back to bf16 is round-to-nearest-even, as candle's and PyTorch's casts round.

typedef unsigned short bf16_bits;

__device__ __forceinline__ float bf16_to_f32(bf16_bits v) {
    return __uint_as_float(((unsigned int)v) << 16);
}

__device__ __forceinline__ bf16_bits f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_bits)((u >> 16) | 0x0040u);  // quiet NaN, sign kept
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_bits)(u >> 16);
}

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const bf16_bits* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_bits* p, float v) { *p = f32_to_bf16(v); }

// Eight consecutive values of W as f32, from one 16-byte (bf16) or two 16-byte (f32) loads.
__device__ __forceinline__ void load8(const bf16_bits* p, float out[8]) {
    uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void load8(const float* p, float out[8]) {
    float4 a = __ldg(reinterpret_cast<const float4*>(p));
    float4 b = __ldg(reinterpret_cast<const float4*>(p + 4));
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

constexpr int WARPS = 4;   // rows per block
constexpr int UNROLL = 4;  // 16-byte loads in flight per lane

// W: [E, N, K], x: [R, K], y: [R, N]; grid (ceil(N / WARPS), R), block 32·WARPS.
// Vector path needs K % 8 == 0 and 16-byte aligned rows (checked by the launcher).
template <typename TW, typename TX, bool INDEXED, bool VECTOR>
__device__ void gemv(const TW* __restrict__ w, const TX* __restrict__ x,
                     const unsigned int* __restrict__ ids, TX* __restrict__ y,
                     int n_rows, int k_cols) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int r = blockIdx.y;
    if (n >= n_rows) return;
    const long long expert = INDEXED ? (long long)ids[r] : 0;
    const TW* row = w + (expert * n_rows + n) * (long long)k_cols;
    const TX* xr = x + (long long)r * k_cols;
    float acc = 0.f;
    if (VECTOR) {
        constexpr int STEP = 32 * 8;
        int k = lane * 8;
        for (; k + (UNROLL - 1) * STEP < k_cols; k += UNROLL * STEP) {
            float wv[UNROLL][8];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) load8(row + k + u * STEP, wv[u]);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
                for (int i = 0; i < 8; ++i) acc += wv[u][i] * load_f32(xr + k + u * STEP + i);
            }
        }
        for (; k < k_cols; k += STEP) {
            float wv[8];
            load8(row + k, wv);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc += wv[i] * load_f32(xr + k + i);
        }
    } else {
        for (int k = lane; k < k_cols; k += 32) acc += load_f32(row + k) * load_f32(xr + k);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) store(y + (long long)r * n_rows + n, acc);
}

#define GEMV_ENTRY(NAME, TW, TX, INDEXED, VECTOR)                                              \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                   \
        NAME(const TW* w, const TX* x, const unsigned int* ids, TX* y, int n_rows, int k_cols) { \
        gemv<TW, TX, INDEXED, VECTOR>(w, x, ids, y, n_rows, k_cols);                           \
    }

#define GEMV_FAMILY(SUFFIX, TW, TX)                       \
    GEMV_ENTRY(gemv_##SUFFIX, TW, TX, false, true)        \
    GEMV_ENTRY(gemv_scalar_##SUFFIX, TW, TX, false, false) \
    GEMV_ENTRY(moe_gemv_##SUFFIX, TW, TX, true, true)     \
    GEMV_ENTRY(moe_gemv_scalar_##SUFFIX, TW, TX, true, false)

// Weight type, activation (and output) type.
GEMV_FAMILY(bf16_bf16, bf16_bits, bf16_bits)
GEMV_FAMILY(bf16_f32, bf16_bits, float)
GEMV_FAMILY(f32_f32, float, float)
