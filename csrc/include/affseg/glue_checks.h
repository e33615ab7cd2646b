// Argument checks of the C++ ops, shared by the CPU and the CUDA torch glue so both devices reject
// the same malformed direct `torch.ops.affseg.*` calls with the same messages. (The public Python
// API validates user input with ValueError/TypeError before it gets here.)
#pragma once
#include <ATen/ATen.h>

#include "affseg/checks.h"

namespace affseg {

inline void check_same_device(at::DeviceType device, std::initializer_list<const at::Tensor*> tensors,
                              const char* op) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* t : tensors) {
    AFFSEG_CHECK_DEVICE(*t, device);
    TORCH_CHECK(t->device() == first.device(), op, ": every input must be on one device");
  }
}

// pdcr_fwd / pdcr_bwd: fa (B,N,C), phia (B,W,N,K), fb (B,M,C), phib (B,W,M,K), valid_a (B,N),
// valid_b (B,M); floating tensors of one dtype, contiguous.
inline void check_pdcr_inputs(const at::Tensor& fa, const at::Tensor& pa, const at::Tensor& fb, const at::Tensor& pb,
                              const at::Tensor& va, const at::Tensor& vb, at::DeviceType device) {
  AFFSEG_CHECK_FLOAT(fa);
  AFFSEG_CHECK_DIM(fa, 3);
  AFFSEG_CHECK_DIM(fb, 3);
  AFFSEG_CHECK_DIM(pa, 4);
  AFFSEG_CHECK_DIM(pb, 4);
  AFFSEG_CHECK_DIM(va, 2);
  AFFSEG_CHECK_DIM(vb, 2);
  AFFSEG_CHECK_SAME_DTYPE(fa, fb);
  AFFSEG_CHECK_SAME_DTYPE(fa, pa);
  AFFSEG_CHECK_SAME_DTYPE(fa, pb);
  TORCH_CHECK(va.scalar_type() == at::kBool && vb.scalar_type() == at::kBool, "valid_a and valid_b must be bool");
  check_same_device(device, {&fa, &pa, &fb, &pb, &va, &vb}, "pdcr");
  for (const at::Tensor* t : {&fa, &pa, &fb, &pb, &va, &vb}) {
    TORCH_CHECK(t->is_contiguous(), "pdcr: every input must be contiguous");
  }
  const int64_t B = fa.size(0), N = fa.size(1), C = fa.size(2), M = fb.size(1);
  TORCH_CHECK(fb.size(0) == B && fb.size(2) == C, "fb must be (B, M, C) with fa's B and C");
  TORCH_CHECK(pa.size(0) == B && pa.size(2) == N, "phia must be (B, W, N, K)");
  TORCH_CHECK(pb.size(0) == B && pb.size(1) == pa.size(1) && pb.size(2) == M && pb.size(3) == pa.size(3),
              "phib must be (B, W, M, K) with phia's W and K");
  TORCH_CHECK(va.size(0) == B && va.size(1) == N, "valid_a must be (B, N)");
  TORCH_CHECK(vb.size(0) == B && vb.size(1) == M, "valid_b must be (B, M)");
  TORCH_CHECK(pa.size(1) >= 1, "pdcr needs at least one window");
}

// cos_lse_fwd / cos_lse_bwd: f (B,N,C) floating, valid (B,N) bool.
inline void check_cos_lse_inputs(const at::Tensor& f, const at::Tensor& valid, at::DeviceType device) {
  AFFSEG_CHECK_FLOAT(f);
  AFFSEG_CHECK_DIM(f, 3);
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool, got ", valid.scalar_type());
  TORCH_CHECK(valid.dim() == 2 && valid.size(0) == f.size(0) && valid.size(1) == f.size(1),
              "valid must be (B, N) matching f ", f.sizes(), ", got ", valid.sizes());
  check_same_device(device, {&f, &valid}, "cos_lse");
}

inline void check_cos_lse_bwd_inputs(const at::Tensor& grad, const at::Tensor& f, const at::Tensor& valid,
                                     const at::Tensor& lse, at::DeviceType device) {
  check_cos_lse_inputs(f, valid, device);
  AFFSEG_CHECK_SAME_DTYPE(grad, f);
  AFFSEG_CHECK_SAME_DTYPE(lse, f);
  TORCH_CHECK(grad.sizes() == valid.sizes() && lse.sizes() == valid.sizes(), "grad_lse and lse must be (B, N) like valid");
  check_same_device(device, {&f, &grad, &lse}, "cos_lse");
}

}  // namespace affseg
