// CUDA kernels of UAFS re-weighting (SPEC §6). Torch-free; the glue is uafs.cu.
//
// One thread per pixel (grid-stride, int64 indexing): the thread computes its attention statistics
// with the arithmetic of affseg/uafs_math.h (M exps and one log), then streams over the C channels;
// consecutive threads touch consecutive pixels, so every channel plane is read coalesced. Forward
// stores only y; backward recomputes U from att and reduces dU = −Σ_c g_c x_c in a register.
#include "affseg/uafs_math.h"
#include "uafs_kernels.h"

namespace affseg {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct PixelAtt {
  T m, s, log_s, H;
};

template <typename T>
__device__ __forceinline__ PixelAtt<T> pixel_att(const T* __restrict__ a, int64_t M, int64_t N) {
  PixelAtt<T> r;
  r.m = a[0];
  for (int64_t j = 1; j < M; ++j) r.m = simd::nan_max(r.m, a[j * N]);
  T s = T(0), pd = T(0);
  for (int64_t j = 0; j < M; ++j) {
    const T d = a[j * N] - r.m;
    const T e = simd::exp(d);
    s += e;
    pd += e * d;
  }
  r.s = s;
  r.log_s = simd::log(s);
  r.H = uafs_entropy(r.log_s, s, pd);
  return r;
}

template <typename T>
__global__ void uafs_fwd_kernel(const T* __restrict__ x, const T* __restrict__ att, T* __restrict__ y, int64_t B,
                                int64_t C, int64_t M, int64_t N, T inv_log_m) {
  const int64_t total = B * N;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / N, i = idx % N;
    const PixelAtt<T> st = pixel_att(att + b * M * N + i, M, N);
    const T w = T(2) - st.H * inv_log_m;
    const T* xp = x + b * C * N + i;
    T* yp = y + b * C * N + i;
    for (int64_t c = 0; c < C; ++c) yp[c * N] = xp[c * N] * w;
  }
}

template <typename T>
__global__ void uafs_bwd_kernel(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ att,
                                T* __restrict__ gx, T* __restrict__ ga, int64_t B, int64_t C, int64_t M, int64_t N,
                                T inv_log_m) {
  const int64_t total = B * N;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / N, i = idx % N;
    const T* a = att + b * M * N + i;
    const PixelAtt<T> st = pixel_att(a, M, N);
    const T w = T(2) - st.H * inv_log_m;
    const int64_t off = b * C * N + i;
    T du = T(0);
    for (int64_t c = 0; c < C; ++c) {
      const T gv = g[off + c * N];
      gx[off + c * N] = gv * w;
      du -= gv * x[off + c * N];
    }
    const T inv_s = T(1) / st.s;
    T* gap = ga + b * M * N + i;
    for (int64_t j = 0; j < M; ++j) {
      const T d = a[j * N] - st.m;
      gap[j * N] = du * uafs_dU_da(simd::exp(d), d, inv_s, st.log_s, st.H, inv_log_m);
    }
  }
}

unsigned blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (int64_t(1) << 30) ? blocks : (int64_t(1) << 30));
}

}  // namespace

template <typename T>
void uafs_fwd_launch(const T* x, const T* att, T* y, int64_t B, int64_t C, int64_t M, int64_t N, cudaStream_t stream) {
  if (B * N == 0) return;
  uafs_fwd_kernel<T><<<blocks_for(B * N), kThreads, 0, stream>>>(x, att, y, B, C, M, N, T(1) / log(T(M)));
}

template <typename T>
void uafs_bwd_launch(const T* grad, const T* x, const T* att, T* grad_x, T* grad_att, int64_t B, int64_t C, int64_t M,
                     int64_t N, cudaStream_t stream) {
  if (B * N == 0) return;
  uafs_bwd_kernel<T><<<blocks_for(B * N), kThreads, 0, stream>>>(grad, x, att, grad_x, grad_att, B, C, M, N,
                                                                 T(1) / log(T(M)));
}

template void uafs_fwd_launch<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                     cudaStream_t);
template void uafs_fwd_launch<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t,
                                      cudaStream_t);
template void uafs_bwd_launch<float>(const float*, const float*, const float*, float*, float*, int64_t, int64_t,
                                     int64_t, int64_t, cudaStream_t);
template void uafs_bwd_launch<double>(const double*, const double*, const double*, double*, double*, int64_t, int64_t,
                                      int64_t, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace affseg
