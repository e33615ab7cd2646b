// CUDA kernel of the fused patch statistics (SPEC §5). Torch-free; the glue is entropy.cu.
//
// One thread block per (tile, batch). Each thread walks the tile's pixels with stride blockDim
// (coalesced along the contiguous last dim), computes the pixel's statistics with the arithmetic
// of affseg/entropy_math.h, and each warp reduces them per class with shuffles (counts by ballot)
// into its own shared-memory slots; the warps' slots are summed in a fixed order at the end, so
// results are deterministic (no atomics). Logits are read from DRAM once: the per-class passes of
// one pixel hit L1. Indexing is int64.
#include "affseg/entropy_math.h"
#include "entropy_kernels.h"

namespace affseg {
namespace cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <typename T>
__global__ void patch_entropy_kernel(const T* __restrict__ logits, const int64_t* __restrict__ mask,
                                     T* __restrict__ entropy, T* __restrict__ mean_conf, int64_t* __restrict__ count,
                                     EntropyGeometry g, bool shannon) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t K = g.classes;
  const int nwarps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  long long* sh_n = reinterpret_cast<long long*>(smem);
  T* sh_h = reinterpret_cast<T*>(sh_n + nwarps * K);
  T* sh_p = sh_h + nwarps * K;
  for (int64_t i = threadIdx.x; i < nwarps * K; i += blockDim.x) {
    sh_n[i] = 0;
    sh_h[i] = T(0);
    sh_p[i] = T(0);
  }
  __syncthreads();

  const int64_t tile = blockIdx.x, b = blockIdx.y;
  const int64_t tz = tile / (g.tiles[1] * g.tiles[2]), ty = (tile / g.tiles[2]) % g.tiles[1], tx = tile % g.tiles[2];
  const int64_t z0 = tz * g.patch[0], y0 = ty * g.patch[1], x0 = tx * g.patch[2];
  const int64_t nz = min(g.patch[0], g.size[0] - z0), ny = min(g.patch[1], g.size[1] - y0),
                nx = min(g.patch[2], g.size[2] - x0);
  const int64_t n = nz * ny * nx, N = g.size[0] * g.size[1] * g.size[2];
  const T* x = logits + b * K * N;
  const bool has_mask = mask != nullptr;
  const T inv_log_k = T(1) / log(T(K));

  for (int64_t base = 0; base < n; base += blockDim.x) {  // uniform trip count: whole warps reduce
    const int64_t t = base + threadIdx.x;
    const bool ok = t < n;
    int64_t pix = 0, cls = -1;
    T m = T(0), s_lt = T(0), ties = T(0);
    if (ok) {
      pix = ((z0 + t / (ny * nx)) * g.size[1] + y0 + (t / nx) % ny) * g.size[2] + x0 + t % nx;
      if (has_mask) cls = mask[b * N + pix];
      m = x[pix];
      for (int64_t k = 1; k < K; ++k) m = simd::nan_max(m, x[k * N + pix]);
      for (int64_t k = 0; k < K; ++k) {
        const T e = simd::exp(x[k * N + pix] - m);
        s_lt += e < T(1) ? e : T(0);
        ties += e == T(1) ? T(1) : T(0);
      }
    }
    const T s = ok ? s_lt + ties : T(1);
    const T inv_s = T(1) / s, log_s = simd::log(s);
    T H = T(0);
    if (shannon && ok) {
      for (int64_t k = 0; k < K; ++k) {
        const T d = x[k * N + pix] - m;
        H += neg_plogp(simd::exp(d), d, inv_s, log_s);
      }
      H *= inv_log_k;
    }
    for (int64_t k = 0; k < K; ++k) {
      const bool member = ok && (!has_mask || cls == k);
      T h = T(0), p = T(0);
      if (member) {
        const T d = x[k * N + pix] - m;
        const T e = simd::exp(d);
        p = e * inv_s;
        h = shannon ? H : neg_plogp(e, d, inv_s, log_s) + neg_xlogx_ratio(others_sum(e, s, s_lt, ties), inv_s, log_s);
      }
      const unsigned ballot = __ballot_sync(kFull, member);
      p = warp_sum(p);
      const bool want_h = !shannon || has_mask || k == 0;
      if (want_h) h = warp_sum(h);
      if (lane == 0) {
        sh_n[warp * K + k] += __popc(ballot);
        sh_p[warp * K + k] += p;
        if (want_h) sh_h[warp * K + k] += h;
      }
    }
  }
  __syncthreads();

  const int64_t tiles = g.tiles[0] * g.tiles[1] * g.tiles[2];
  const int64_t k_out = (shannon && !has_mask) ? 1 : K;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    long long cnt = 0;
    T sh = T(0), sp = T(0);
    for (int w = 0; w < nwarps; ++w) {
      cnt += sh_n[w * K + k];
      sh += sh_h[w * K + k];
      sp += sh_p[w * K + k];
    }
    const T inv = cnt > 0 ? T(1) / T(cnt) : T(0);
    const int64_t out = (b * K + k) * tiles + tile;
    mean_conf[out] = sp * inv;
    count[out] = cnt;
    if (k < k_out) entropy[(b * k_out + k) * tiles + tile] = sh * inv;
  }
}

}  // namespace

template <typename T>
void patch_entropy_launch(const T* logits, const int64_t* mask, T* entropy, T* mean_conf, int64_t* count,
                          EntropyGeometry g, bool shannon, cudaStream_t stream) {
  const int64_t tiles = g.tiles[0] * g.tiles[1] * g.tiles[2];
  if (g.batch == 0 || tiles == 0) return;
  const int64_t per_warp = g.classes * static_cast<int64_t>(2 * sizeof(T) + sizeof(long long));
  // Fewer warps for large K keep the per-warp sums within the default 48 KiB of shared memory.
  int threads = 256;
  while (threads > 32 && per_warp * (threads / 32) > 48 * 1024) threads /= 2;
  const int64_t pixels = g.patch[0] * g.patch[1] * g.patch[2];
  while (threads > 32 && threads / 2 >= pixels) threads /= 2;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(g.batch));
  patch_entropy_kernel<T><<<grid, threads, per_warp * (threads / 32), stream>>>(logits, mask, entropy, mean_conf,
                                                                               count, g, shannon);
}

template void patch_entropy_launch<float>(const float*, const int64_t*, float*, float*, int64_t*, EntropyGeometry, bool,
                                          cudaStream_t);
template void patch_entropy_launch<double>(const double*, const int64_t*, double*, double*, int64_t*, EntropyGeometry,
                                           bool, cudaStream_t);

}  // namespace cuda
}  // namespace affseg
