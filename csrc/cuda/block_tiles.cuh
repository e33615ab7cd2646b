// The 32×32 pair tile of the CUDA similarity kernels (pdcr_kernels.cu, supcon_kernels.cu): the dot
// tile of a block's 32 outer items against 32 inner items, and the backward's product G·(inner
// features) into the outer items' gradient rows. One pattern, two arithmetics (DotPrecision):
//
// - kDotIeee (float32 "highest", float64): scalar FMAs from shared memory, channels staged in chunks
//   of 32 (16 for double); thread t owns outer item t/4 and inner items t%4 + 4q, q < 8. The product
//   adds into global gradient rows that only this block owns (zeroed by the launcher).
// - kDotTf32 / kDotBf16 (float32 inputs, sm_80+): tensor cores through WMMA. The 4 warps of the block
//   each own one 16×16 quarter of the tile; channel chunks of 32 are converted to tf32 (cvt.rna) or
//   bf16 (round to nearest even) as they are staged in shared memory, the fragments accumulate in
//   fp32 across chunks and are stored to a shared fp32 tile that the epilogue reads with the IEEE
//   path's thread mapping. The backward's G tile is converted the same way and multiplied into an
//   fp32 accumulator of the block's 32 gradient rows held in dynamic shared memory across the whole
//   inner sweep, written to global memory once at the end (coalesced). Only the WMMA load, mma and
//   store calls touch fragments, so no fragment layout is assumed.
//
// Work per tile: 2·32·32·C FLOPs for the dots, the same again for the product. Bytes: each chunk
// stages 32 outer and 32 inner rows × 32 channels (coalesced 128-byte rows, from L2 after the first
// block), the IEEE product re-reads the inner rows through L1.
// Shared memory (static): IEEE float 2·32·33·4 + 32·33·4 B; tf32 4·32·36·4 = 18 KiB; bf16 12 KiB;
// tensor-core backward adds 32·(round_up(C, 32) + 4)·4 B dynamic (C = 1024: 129 KiB, needs the opt-in
// limit of sm_80+; tensor_cores_fit says whether the device has it).
// Limits: WMMA alignment: every fragment pointer is 32-byte aligned and every ldm a multiple of 16
// bytes (asserted below); tensor-core paths compile to __trap() below sm_80 and are never launched
// there.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "dot_precision.h"

// The tf32/bf16 WMMA shapes exist from sm_80 (mma.h undefines its own __CUDA_AMPERE_MMA__ at its end).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define AFFSEG_TENSOR_CORES 1
#else
#define AFFSEG_TENSOR_CORES 0
#endif

namespace affseg {
namespace cuda {
namespace tiles {

constexpr int kThreads = 128;
constexpr int kOuter = 32;                        // outer items per block
constexpr int kLanesPerItem = kThreads / kOuter;  // 4 threads share an outer item
constexpr int kInner = 32;                        // inner items per tile
constexpr int kPerThread = kInner / kLanesPerItem;

__device__ __forceinline__ int item() { return threadIdx.x / kLanesPerItem; }
__device__ __forceinline__ int lane() { return threadIdx.x % kLanesPerItem; }
// Inner position (0..31) of the thread's q-th pair in a tile.
__device__ __forceinline__ int inner_pos(int q) { return lane() + kLanesPerItem * q; }

// The tensor-core backward's gradient accumulator (dynamic shared memory, kOuter rows).
extern __shared__ __align__(128) unsigned char dynamic_smem[];

__host__ __device__ inline int64_t accumulator_ld(int64_t C) { return (C + 31) / 32 * 32 + 4; }
inline size_t accumulator_bytes(int64_t C) { return sizeof(float) * kOuter * accumulator_ld(C); }

// ---------------------------------------------------------------------------------------------
// IEEE: scalar FMAs.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct IeeeTile {
  static constexpr int CH = sizeof(T) == 4 ? 32 : 16;
  T outer[kOuter][CH + 1];
  T inner[kInner][CH + 1];
  T g[kOuter][kInner + 1];

  // acc[q] = feat_outer(outer0 + item) · feat_inner(inner0 + inner_pos(q)) over all C channels
  // (0 past the ends); every thread of the block calls it.
  __device__ void dots(const T* outer_feat, int64_t outer0, int64_t n_outer, const T* inner_feat, int64_t inner0,
                       int64_t n_inner, int64_t C, T (&acc)[kPerThread]) {
    const int it = item(), ln = lane();
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) acc[q] = T(0);
    for (int64_t c0 = 0; c0 < C; c0 += CH) {
      for (int e = threadIdx.x; e < kOuter * CH; e += kThreads) {
        const int r = e / CH, c = e % CH;
        const bool in = outer0 + r < n_outer && c0 + c < C;
        outer[r][c] = in ? outer_feat[(outer0 + r) * C + c0 + c] : T(0);
      }
      for (int e = threadIdx.x; e < kInner * CH; e += kThreads) {
        const int r = e / CH, c = e % CH;
        const bool in = inner0 + r < n_inner && c0 + c < C;
        inner[r][c] = in ? inner_feat[(inner0 + r) * C + c0 + c] : T(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int c = 0; c < CH; ++c) {
        const T a = outer[it][c];
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) acc[q] += a * inner[ln + kLanesPerItem * q][c];
      }
      __syncthreads();
    }
  }

  __device__ void begin_grad(int64_t) {}
  __device__ void put_grad(int q, T G) { g[item()][inner_pos(q)] = G; }

  // grad[o][c] += Σ_p G[o][p]·inner[p][c] for the block's outer items o (the 4 lanes of an item split
  // its channels); every thread calls it after put_grad for all its pairs.
  __device__ void accumulate(const T* inner_feat, int64_t inner0, int64_t n_inner, int64_t C, int64_t outer0,
                             int64_t n_outer, T* grad) {
    __syncthreads();
    const int64_t o = outer0 + item();
    if (o < n_outer) {
      const int64_t tile = n_inner - inner0 < kInner ? n_inner - inner0 : kInner;
      for (int64_t c = lane(); c < C; c += kLanesPerItem) {
        T sum = T(0);
        for (int64_t p = 0; p < tile; ++p) sum += g[item()][p] * inner_feat[(inner0 + p) * C + c];
        grad[o * C + c] += sum;
      }
    }
    __syncthreads();
  }

  __device__ void end_grad(int64_t, int64_t, int64_t, T*) {}
};

// ---------------------------------------------------------------------------------------------
// Tensor cores (float32 inputs).
// ---------------------------------------------------------------------------------------------
template <int kPrec>
struct TensorCoreType;
template <>
struct TensorCoreType<kDotTf32> {
  using elem = float;  // shared-memory operand storage
#if AFFSEG_TENSOR_CORES
  using fragment = nvcuda::wmma::precision::tf32;  // WMMA element type (declared by mma.h from sm_80)
#else
  using fragment = float;
#endif
  static constexpr int kK = 8;                    // m16n16k8
  static constexpr int kLd = 36;                  // 32 + 4: a multiple of 4 floats
};
template <>
struct TensorCoreType<kDotBf16> {
  using elem = __nv_bfloat16;
  using fragment = __nv_bfloat16;
  static constexpr int kK = 16;  // m16n16k16
  static constexpr int kLd = 40;  // 32 + 8: a multiple of 8 halves
};

constexpr int kChunk = 32;   // channels per staged chunk (= kInner, so the G tile is one chunk wide)
constexpr int kDotsLd = 36;  // fp32 dot tile row stride

template <int kPrec>
__device__ __forceinline__ typename TensorCoreType<kPrec>::elem to_operand(float x) {
#if AFFSEG_TENSOR_CORES
  if constexpr (kPrec == kDotTf32) {
    return nvcuda::wmma::__float_to_tf32(x);
  } else {
    return __float2bfloat16_rn(x);
  }
#else
  __trap();
  return typename TensorCoreType<kPrec>::elem{};
#endif
}

template <int kPrec>
struct TensorCoreTile {
  using Traits = TensorCoreType<kPrec>;
  using E = typename Traits::elem;
  static constexpr int kLd = Traits::kLd, kK = Traits::kK;
  static_assert(kLd * sizeof(E) % 16 == 0, "WMMA ldm must be a multiple of 16 bytes");
  static_assert(kOuter * kLd * sizeof(E) % 32 == 0 && kOuter * kDotsLd * sizeof(float) % 32 == 0,
                "every member must start 32-byte aligned");
  static_assert(16 * kLd * sizeof(E) % 32 == 0 && kK * kLd * sizeof(E) % 32 == 0 && 16 * sizeof(E) % 32 == 0,
                "fragment pointers (row 16, row kK, column 16 of a member) must be 32-byte aligned");
  static_assert(kChunk == kInner, "the G tile is one channel chunk wide");
  alignas(128) E outer[kOuter][kLd];  // outer rows × one chunk of channels
  alignas(32) E inner[kInner][kLd];   // inner rows × one chunk of channels
  alignas(32) float sims[kOuter][kDotsLd];  // the fp32 dot tile
  alignas(32) E g[kOuter][kLd];  // G (outer × inner), the backward's A operand

  // Rows row0.. of src (n_rows, C) × channels c0..c0+31 into dst, converted; 0 past the ends. A warp
  // reads 32 consecutive channels of one row: one 128-byte transaction.
  __device__ static void stage(E (*dst)[kLd], const float* src, int64_t row0, int64_t n_rows, int64_t C, int64_t c0) {
    for (int e = threadIdx.x; e < kOuter * kChunk; e += kThreads) {
      const int r = e / kChunk, c = e % kChunk;
      const bool in = row0 + r < n_rows && c0 + c < C;
      dst[r][c] = to_operand<kPrec>(in ? src[(row0 + r) * C + c0 + c] : 0.0f);
    }
  }

  // As the IEEE dots, on tensor cores.
  __device__ void dots(const float* outer_feat, int64_t outer0, int64_t n_outer, const float* inner_feat,
                       int64_t inner0, int64_t n_inner, int64_t C, float (&acc)[kPerThread]) {
#if AFFSEG_TENSOR_CORES
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wr = warp >> 1, wc = warp & 1;
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> c;
    wmma::fill_fragment(c, 0.0f);
    for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
      __syncthreads();  // the last chunk's (or tile's) readers of outer/inner are done
      stage(outer, outer_feat, outer0, n_outer, C, c0);
      stage(inner, inner_feat, inner0, n_inner, C, c0);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kChunk; k += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Traits::fragment, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Traits::fragment, wmma::col_major> b;
        wmma::load_matrix_sync(a, &outer[wr * 16][k], kLd);
        wmma::load_matrix_sync(b, &inner[wc * 16][k], kLd);  // (k, n) at inner[n][k]: column-major B
        wmma::mma_sync(c, a, b, c);
      }
    }
    __syncthreads();  // the last tile's readers of sims are done (also when C == 0)
    wmma::store_matrix_sync(&sims[wr * 16][wc * 16], c, kDotsLd, wmma::mem_row_major);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) acc[q] = sims[item()][inner_pos(q)];
#else
    __trap();
#endif
  }

  __device__ static float* accumulator() { return reinterpret_cast<float*>(dynamic_smem); }

  __device__ void begin_grad(int64_t C) {
    const int64_t n = kOuter * accumulator_ld(C);
    for (int64_t e = threadIdx.x; e < n; e += kThreads) accumulator()[e] = 0.0f;
    // the first accumulate's barriers order these stores before any fragment load
  }

  __device__ void put_grad(int q, float G) { g[item()][inner_pos(q)] = to_operand<kPrec>(G); }

  // accumulator[o][c] += Σ_p G[o][p]·inner[p][c] over every channel chunk; warp (wr, wc) owns the
  // 16×16 output block (rows wr·16, channels c0 + wc·16) of each chunk, so no two warps share one.
  __device__ void accumulate(const float* inner_feat, int64_t inner0, int64_t n_inner, int64_t C, int64_t,
                             int64_t, float*) {
#if AFFSEG_TENSOR_CORES
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wr = warp >> 1, wc = warp & 1;
    const int64_t ld = accumulator_ld(C);
    for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
      __syncthreads();  // G is complete (first chunk); the last chunk's readers of inner are done
      stage(inner, inner_feat, inner0, n_inner, C, c0);
      __syncthreads();
      float* out = accumulator() + (wr * 16) * ld + c0 + wc * 16;
      wmma::fragment<wmma::accumulator, 16, 16, kK, float> c;
      wmma::load_matrix_sync(c, out, static_cast<unsigned>(ld), wmma::mem_row_major);
#pragma unroll
      for (int k = 0; k < kInner; k += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Traits::fragment, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Traits::fragment, wmma::row_major> b;
        wmma::load_matrix_sync(a, &g[wr * 16][k], kLd);
        wmma::load_matrix_sync(b, &inner[k][wc * 16], kLd);  // (k, n) at inner[k][n]: row-major B
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(out, c, static_cast<unsigned>(ld), wmma::mem_row_major);
    }
#else
    __trap();
#endif
  }

  // grad[outer0 + r][c] = accumulator[r][c]: the block's rows, written once.
  __device__ void end_grad(int64_t outer0, int64_t n_outer, int64_t C, float* grad) {
    __syncthreads();
    const int64_t ld = accumulator_ld(C);
    const int64_t rows = n_outer - outer0 < kOuter ? n_outer - outer0 : kOuter;
    for (int64_t e = threadIdx.x; e < rows * C; e += kThreads) {
      const int64_t r = e / C, c = e % C;
      grad[(outer0 + r) * C + c] = accumulator()[r * ld + c];
    }
  }
};

// The tile of a kernel instantiated for element type T and precision kPrec (tensor cores: float only).
template <typename T, int kPrec>
using BlockTile = std::conditional_t<kPrec == kDotIeee, IeeeTile<T>, TensorCoreTile<kPrec>>;

// Host side: whether the current device runs `kernel`'s tensor-core tiles with `dynamic_bytes` of
// accumulator on top of its static shared memory, raising the kernel's dynamic limit when the total
// is above the default 48 KiB. False (the caller then runs the IEEE kernels) when the device is older
// than sm_80, when the loaded image was built from PTX below compute_80 (its tensor-core bodies are
// __trap()), or when the device's opt-in limit is too small (C above about 640 with 99 KiB, as on
// sm_86/89, 1150 on an A100, 1660 on an H100: estimates from the static sizes ptxas reports). A failed
// runtime call is cleared, so that it is not reported as the failure of the IEEE launch that follows.
template <typename Kernel>
inline bool tensor_cores_fit(Kernel kernel, size_t dynamic_bytes) {
  int device = 0, major = 0, optin = 0;
  cudaFuncAttributes attr{};
  const bool queried = cudaGetDevice(&device) == cudaSuccess &&
                       cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                       cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
                       cudaFuncGetAttributes(&attr, kernel) == cudaSuccess;
  if (!queried) {
    (void)cudaGetLastError();
    return false;
  }
  const size_t total = attr.sharedSizeBytes + dynamic_bytes;
  if (major < 8 || attr.ptxVersion < 80 || total > static_cast<size_t>(optin)) return false;
  if (total > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(dynamic_bytes)) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

// The dot precision a call runs: the requested tf32/bf16 where fits(std::integral_constant<int, prec>)
// says every kernel of the op can run it here (float32 only: tensor_cores_fit), IEEE otherwise.
template <typename T, typename Fits>
inline DotPrecision pick_precision(DotPrecision prec, Fits fits) {
  if constexpr (sizeof(T) != 4) {
    return kDotIeee;
  } else {
    if (prec == kDotTf32 && fits(std::integral_constant<int, kDotTf32>{})) return kDotTf32;
    if (prec == kDotBf16 && fits(std::integral_constant<int, kDotBf16>{})) return kDotBf16;
    return kDotIeee;
  }
}

}  // namespace tiles
}  // namespace cuda
}  // namespace affseg
