// The one TORCH_LIBRARY(affseg) block: every schema of affseg's C++ ops, plus the tiny PyInit__C that
// lets `import affseg._C` load this library (and so run the static registrars) without pybind11.
//
// Kernels are registered per device in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL);
// autograd and fake (meta) kernels are registered from Python in affseg/_ops/.
#include <Python.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "affseg/cpu_isa.h"

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace affseg {

bool compiled_with_cuda() {
#ifdef AFFSEG_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// The SIMD build the CPU kernels run ("avx512", "avx2" or "baseline"), after AFFSEG_CPU_ISA's cap.
// An unknown AFFSEG_CPU_ISA raises ValueError here (and every CPU kernel call raises it too).
std::string cpu_isa() {
  try {
    return cpu::isa_name(cpu::simd_level());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

}  // namespace affseg

TORCH_LIBRARY(affseg, m) {
  m.def("_compiled_with_cuda() -> bool", &affseg::compiled_with_cuda);
  m.def("_compiled_with_openmp() -> bool", &affseg::compiled_with_openmp);
  m.def("_cpu_isa() -> str", &affseg::cpu_isa);

  // SPEC §1. labels int64 (B,*S); centers int64 (B,N,ndim) -> phi float32 (B,W,N,K), valid bool (B,W,N).
  m.def(
      "patch_label_ratios(Tensor labels, Tensor centers, int[] window_sizes, int num_classes, "
      "int? ignore_index) -> (Tensor phi, Tensor valid)");

  // SPEC §3 on unit vectors (normalisation stays in autograd-visible torch code).
  // Rows from (fa (B,N,C), phia (B,W,N,K), valid_a (B,N)), columns from (fb (B,M,C), phib (B,W,M,K),
  // valid_b (B,M)); all floating tensors share one dtype (float32 or float64). Intra-layer passes the
  // same tensors twice. Returns the per-row loss (B,N) (0 at rows with no valid column) and the per
  // (row, window) log-sum-exp of the denominator (B,N,W), which backward recomputes from.
  m.def(
      "pdcr_fwd(Tensor fa, Tensor phia, Tensor fb, Tensor phib, Tensor valid_a, Tensor valid_b, "
      "float inv_tau, bool swapped, bool fg_l1, bool exclude_self, str input_precision=\"ieee\") "
      "-> (Tensor row_loss, Tensor row_lse)");
  m.def(
      "pdcr_bwd(Tensor grad_row, Tensor fa, Tensor phia, Tensor fb, Tensor phib, Tensor valid_a, "
      "Tensor valid_b, Tensor row_lse, float inv_tau, bool swapped, bool fg_l1, bool exclude_self, "
      "str input_precision=\"ieee\") -> (Tensor grad_fa, Tensor grad_fb)");
  // Intra-layer pairs: f, phi, valid as both rows and columns (what pdcr_fwd computes when passed
  // the same tensors twice); the backward returns the one gradient of f in both roles, so the CPU
  // kernel sweeps the symmetric similarity matrix once.
  m.def(
      "pdcr_intra_fwd(Tensor f, Tensor phi, Tensor valid, float inv_tau, bool swapped, bool fg_l1, "
      "bool exclude_self, str input_precision=\"ieee\") -> (Tensor row_loss, Tensor row_lse)");
  m.def(
      "pdcr_intra_bwd(Tensor grad_row, Tensor f, Tensor phi, Tensor valid, Tensor row_lse, float inv_tau, "
      "bool swapped, bool fg_l1, bool exclude_self, str input_precision=\"ieee\") -> Tensor grad_f");

  // SPEC §4 denominator: lse_i = LSE_{k != i, valid_k} (f_i . f_k) * inv_tau over unit rows f (B,N,C);
  // -inf where a row has no valid column. The soft-label positive term is bilinear and stays in torch.
  // input_precision (SPEC §8, here and in the pdcr ops): the CUDA kernels' dot products, "ieee" (FMA),
  // "tf32" or "bf16" (tensor cores, float32 inputs); the CPU kernels check it and compute IEEE.
  m.def("cos_lse_fwd(Tensor f, Tensor valid, float inv_tau, str input_precision=\"ieee\") -> Tensor");
  m.def(
      "cos_lse_bwd(Tensor grad_lse, Tensor f, Tensor valid, Tensor lse, float inv_tau, "
      "str input_precision=\"ieee\") -> Tensor");

  // SPEC §5. logits (B,K,*S); class_mask int64 (B,*S) or None -> entropy, mean_conf, count (int64).
  m.def(
      "patch_entropy(Tensor logits, int[] patch_size, bool shannon, Tensor? class_mask) "
      "-> (Tensor entropy, Tensor mean_conf, Tensor count)");

  // SPEC §6. x (B,C,*S), att (B,M,*S) -> x * (2 - U).
  m.def("uafs_fwd(Tensor x, Tensor att) -> Tensor");
  m.def("uafs_bwd(Tensor grad_out, Tensor x, Tensor att) -> (Tensor grad_x, Tensor grad_att)");

  // SPEC §7 (Semi-AGCL). Float inputs share one dtype (float32 or float64); indices int64.
  // A (N, M) = exp(-dist(y_t (N, D), y_s (M, D)) * inv_two_sigma2), dist squared L2 or L1 (l1);
  // the backward returns grad_y_s (M, D), recomputing A.
  m.def("affinity_matrix(Tensor y_t, Tensor y_s, float inv_two_sigma2, bool l1) -> Tensor");
  m.def("affinity_matrix_bwd(Tensor grad_a, Tensor y_t, Tensor y_s, float inv_two_sigma2, bool l1) -> Tensor");
  // q (B, C) unit rows; neg (Q, C) the raw queue and neg_scale (Q,) 1 / max(|n|, eps), so the kernels
  // work on the unit rows neg_scale * neg without a normalised (Q, C) copy; q_cls (B,), neg_cls (Q,)
  // int64 (read with use_classes). One streaming pass per query: queue_lse (B,), the top
  // H = min(n_hard, Q) valid negatives by q.n hard_idx (B, H) (-1 past hard_count), hard_count (B,).
  m.def(
      "hard_negatives(Tensor q, Tensor neg, Tensor neg_scale, Tensor q_cls, Tensor neg_cls, float inv_tau, "
      "int n_hard, bool use_classes) -> (Tensor queue_lse, Tensor hard_idx, Tensor hard_count)");
  m.def(
      "queue_lse_bwd(Tensor grad_lse, Tensor q, Tensor neg, Tensor neg_scale, Tensor q_cls, Tensor neg_cls, "
      "Tensor queue_lse, float inv_tau, bool use_classes) -> Tensor");
  // alpha (Q,), pairs (B, P, 2) int64 positions into each query's hard list -> logits (B, P), -inf
  // for invalid pairs; the backward returns grad_q (B, C).
  m.def(
      "mixed_logits(Tensor q, Tensor neg, Tensor neg_scale, Tensor alpha, Tensor hard_idx, Tensor hard_count, "
      "Tensor pairs, float inv_tau) -> Tensor");
  m.def(
      "mixed_logits_bwd(Tensor grad_logits, Tensor q, Tensor neg, Tensor neg_scale, Tensor alpha, "
      "Tensor hard_idx, Tensor hard_count, Tensor pairs, float inv_tau) -> Tensor");
}
