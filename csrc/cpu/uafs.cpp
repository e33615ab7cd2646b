// CPU kernels of UAFS re-weighting (SPEC §6): affseg::uafs_fwd and affseg::uafs_bwd.
//
// One OpenMP task per (batch, block of kBlock contiguous pixels): compute the block's attention
// statistics (M exps and one log per pixel, affseg/uafs_math.h) into per-thread buffers, then
// stream over the C channels of x with the pixel loop innermost so it vectorises. Forward stores
// nothing but y; backward recomputes U from att.
// Memory traffic: forward reads att and x once and writes y; backward reads g, x, att once and
// writes grad_x, grad_att (per thread 2·M·512 + 4·512 values of scratch).
// Limits: float32/float64, x (B, C, *S) with 1 to 3 spatial dims, att (B, M, *S) with M ≥ 2, one
// dtype; no size limit (int64 indexing). Hot loops per ISA through affseg/cpu_isa.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

// Without -fno-trapping-math GCC will not if-convert the float selects of the exp/log polynomials
// and the 0·log 0 guards, so no pixel loop would vectorise. It changes no result, only whether FP
// exception flags may be raised by speculated lanes; scoped to this file's own code.
#pragma GCC optimize("no-trapping-math")
#include "affseg/checks.h"
#include "affseg/cpu_isa.h"
#include "affseg/simd_math.h"
#include "affseg/uafs_math.h"

namespace affseg {
namespace {

constexpr int64_t kBlock = 512;

// The pixel loops, one function each and kept out of line: GCC stops if-converting (and so
// vectorising) them once they are inlined into the block driver. They are compiled three times,
// for baseline x86-64 (SSE2), AVX2+FMA and AVX-512, and picked at run time (setup.py builds for the
// baseline; the exp/log polynomials are compute-bound, the channel loops memory-bound).
#define AFFSEG_PIXEL_PASSES                                                                                     \
  struct Passes {                                                                                               \
  template <typename T>                                                                                         \
  static __attribute__((noinline)) void max_pass(const T* __restrict__ a, T* __restrict__ m, int64_t n) {       \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) m[i] = simd::nan_max(m[i], a[i]);                       \
  }                                                                                                             \
  template <typename T>                                                                                         \
  static __attribute__((noinline)) void exp_pass(const T* __restrict__ a, const T* __restrict__ m,              \
                                          T* __restrict__ d, T* __restrict__ e, T* __restrict__ s,              \
                                          T* __restrict__ pd, int64_t n) {                                      \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                       \
      const T dd = a[i] - m[i];                                                                                 \
      const T ee = simd::exp(dd);                                                                               \
      d[i] = dd;                                                                                                \
      e[i] = ee;                                                                                                \
      s[i] += ee;                                                                                               \
      pd[i] += ee * dd;                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
  /* s → 1/s, pd → H, and w = 2 − H / log M. */                                                                 \
  template <typename T>                                                                                         \
  static __attribute__((noinline)) void entropy_pass(T* __restrict__ s, T* __restrict__ pd, T* __restrict__ ls, \
                                              T* __restrict__ w, T inv_log_m, int64_t n) {                      \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                       \
      const T l = simd::log(s[i]);                                                                              \
      const T h = uafs_entropy(l, s[i], pd[i]);                                                                 \
      ls[i] = l;                                                                                                \
      s[i] = T(1) / s[i];                                                                                       \
      pd[i] = h;                                                                                                \
      w[i] = T(2) - h * inv_log_m;                                                                              \
    }                                                                                                           \
  }                                                                                                             \
  template <typename T>                                                                                         \
  static __attribute__((noinline)) void scale_pass(const T* __restrict__ x, const T* __restrict__ w,            \
                                            T* __restrict__ y, int64_t n) {                                     \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) y[i] = x[i] * w[i];                                     \
  }                                                                                                             \
  template <typename T>                                                                                         \
  static __attribute__((noinline)) void channel_grad_pass(const T* __restrict__ g, const T* __restrict__ x,     \
                                                   const T* __restrict__ w, T* __restrict__ gx,                 \
                                                   T* __restrict__ du, int64_t n) {                             \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                       \
      gx[i] = g[i] * w[i];                                                                                      \
      du[i] -= g[i] * x[i];                                                                                     \
    }                                                                                                           \
  }                                                                                                             \
  template <typename T>                                                                                         \
  static __attribute__((noinline)) void att_grad_pass(const T* __restrict__ du, const T* __restrict__ e,        \
                                               const T* __restrict__ d, const T* __restrict__ inv_s,            \
                                               const T* __restrict__ ls, const T* __restrict__ h,               \
                                               T* __restrict__ ga, T inv_log_m, int64_t n) {                    \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) ga[i] =                                                 \
        du[i] * uafs_dU_da(e[i], d[i], inv_s[i], ls[i], h[i], inv_log_m);                                       \
  }                                                                                                             \
  };

AFFSEG_FOR_EACH_ISA(AFFSEG_PIXEL_PASSES)
#undef AFFSEG_PIXEL_PASSES

// Attention statistics of one block of n pixels: w = 2 − U, 1/s, log s, H, and e, d (M rows)
// for backward.
template <typename T>
struct AttStats {
  std::vector<T> d, e, w, inv_s, log_s, H;
  explicit AttStats(int64_t M) : d(M * kBlock), e(M * kBlock), w(kBlock), inv_s(kBlock), log_s(kBlock), H(kBlock) {}

  template <typename P>
  void compute(const T* att, int64_t stride_m, int64_t M, int64_t n, T inv_log_m) {
    T* mx = w.data();  // w holds the max until entropy_pass overwrites it with the weights
    std::copy(att, att + n, mx);
    for (int64_t j = 1; j < M; ++j) P::max_pass(att + j * stride_m, mx, n);
    std::fill(inv_s.begin(), inv_s.begin() + n, T(0));
    std::fill(H.begin(), H.begin() + n, T(0));
    for (int64_t j = 0; j < M; ++j) {
      P::exp_pass(att + j * stride_m, mx, d.data() + j * kBlock, e.data() + j * kBlock, inv_s.data(), H.data(), n);
    }
    P::entropy_pass(inv_s.data(), H.data(), log_s.data(), w.data(), inv_log_m, n);
  }
};

template <typename T, typename P>
void uafs_fwd_kernel(const T* x, const T* att, T* y, int64_t B, int64_t C, int64_t M, int64_t N) {
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  const T inv_log_m = T(1) / std::log(T(M));
#pragma omp parallel
  {
    AttStats<T> st(M);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * blocks; ++r) {
      const int64_t b = r / blocks, i0 = (r % blocks) * kBlock, n = std::min(kBlock, N - i0);
      st.template compute<P>(att + b * M * N + i0, N, M, n, inv_log_m);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (b * C + c) * N + i0;
        P::scale_pass(x + off, st.w.data(), y + off, n);
      }
    }
  }
}

template <typename T, typename P>
void uafs_bwd_kernel(const T* g, const T* x, const T* att, T* gx, T* ga, int64_t B, int64_t C, int64_t M,
                     int64_t N) {
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  const T inv_log_m = T(1) / std::log(T(M));
#pragma omp parallel
  {
    AttStats<T> st(M);
    std::vector<T> du(kBlock);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * blocks; ++r) {
      const int64_t b = r / blocks, i0 = (r % blocks) * kBlock, n = std::min(kBlock, N - i0);
      st.template compute<P>(att + b * M * N + i0, N, M, n, inv_log_m);
      std::fill(du.begin(), du.begin() + n, T(0));
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (b * C + c) * N + i0;
        P::channel_grad_pass(g + off, x + off, st.w.data(), gx + off, du.data(), n);
      }
      for (int64_t j = 0; j < M; ++j) {
        P::att_grad_pass(du.data(), st.e.data() + j * kBlock, st.d.data() + j * kBlock, st.inv_s.data(),
                         st.log_s.data(), st.H.data(), ga + (b * M + j) * N + i0, inv_log_m, n);
      }
    }
  }
}

void check_pair(const at::Tensor& x, const at::Tensor& att) {
  AFFSEG_CHECK_FLOAT(x);
  AFFSEG_CHECK_SAME_DTYPE(x, att);
  AFFSEG_CHECK_DEVICE(x, at::kCPU);
  AFFSEG_CHECK_DEVICE(att, at::kCPU);
  TORCH_CHECK(x.dim() >= 3 && x.dim() <= 5, "x must be (B, C, *S) with 1 to 3 spatial dims");
  AFFSEG_CHECK_DIM(att, x.dim());
  TORCH_CHECK(att.size(0) == x.size(0) && att.sizes().slice(2) == x.sizes().slice(2),
              "att must match x in batch and spatial dims");
  TORCH_CHECK(att.size(1) >= 2, "att needs M >= 2 channels");
}

at::Tensor uafs_fwd_cpu(const at::Tensor& x_in, const at::Tensor& att_in) {
  check_pair(x_in, att_in);
  const at::Tensor x = x_in.contiguous(), att = att_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t B = x.size(0), C = x.size(1), M = att.size(1), N = x.numel() / std::max<int64_t>(B * C, 1);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uafs_fwd_cpu", [&] {
    AFFSEG_DISPATCH_ISA(uafs_fwd_kernel<scalar_t, isa::Passes>(x.data_ptr<scalar_t>(), att.data_ptr<scalar_t>(),
                                                               y.data_ptr<scalar_t>(), B, C, M, N));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> uafs_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                const at::Tensor& att_in) {
  check_pair(x_in, att_in);
  AFFSEG_CHECK_SAME_DTYPE(grad_in, x_in);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "grad_out must have the shape of x");
  const at::Tensor g = grad_in.contiguous(), x = x_in.contiguous(), att = att_in.contiguous();
  at::Tensor gx = at::empty_like(x);
  // Pixels with no channel (C = 0) get dU = 0, so grad_att is 0 there: zero-fill only that case.
  at::Tensor ga = x.size(1) == 0 ? at::zeros_like(att) : at::empty_like(att);
  const int64_t B = x.size(0), C = x.size(1), M = att.size(1), N = att.numel() / std::max<int64_t>(B * M, 1);
  if (C == 0 || ga.numel() == 0) return {gx, ga};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uafs_bwd_cpu", [&] {
    AFFSEG_DISPATCH_ISA(uafs_bwd_kernel<scalar_t, isa::Passes>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                               att.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                                               ga.data_ptr<scalar_t>(), B, C, M, N));
  });
  return {gx, ga};
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CPU, m) {
  m.impl("uafs_fwd", &affseg::uafs_fwd_cpu);
  m.impl("uafs_bwd", &affseg::uafs_bwd_cpu);
}
