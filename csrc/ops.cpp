// The one TORCH_LIBRARY(affseg) block: every schema of affseg's C++ ops, plus the tiny PyInit__C that
// lets `import affseg._C` load this library (and so run the static registrars) without pybind11.
//
// Kernels are registered per device in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL);
// autograd and fake (meta) kernels are registered from Python in affseg/_ops/.
#include <Python.h>
#include <torch/library.h>

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

}  // namespace affseg

TORCH_LIBRARY(affseg, m) {
  m.def("_compiled_with_cuda() -> bool", &affseg::compiled_with_cuda);
  m.def("_compiled_with_openmp() -> bool", &affseg::compiled_with_openmp);

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
      "float inv_tau, bool swapped, bool fg_l1, bool exclude_self) -> (Tensor row_loss, Tensor row_lse)");
  m.def(
      "pdcr_bwd(Tensor grad_row, Tensor fa, Tensor phia, Tensor fb, Tensor phib, Tensor valid_a, "
      "Tensor valid_b, Tensor row_lse, float inv_tau, bool swapped, bool fg_l1, bool exclude_self) "
      "-> (Tensor grad_fa, Tensor grad_fb)");

  // SPEC §4 denominator: lse_i = LSE_{k != i, valid_k} (f_i . f_k) * inv_tau over unit rows f (B,N,C);
  // -inf where a row has no valid column. The soft-label positive term is bilinear and stays in torch.
  m.def("cos_lse_fwd(Tensor f, Tensor valid, float inv_tau) -> Tensor");
  m.def("cos_lse_bwd(Tensor grad_lse, Tensor f, Tensor valid, Tensor lse, float inv_tau) -> Tensor");

  // SPEC §5. logits (B,K,*S); class_mask int64 (B,*S) or None -> entropy, mean_conf, count (int64).
  m.def(
      "patch_entropy(Tensor logits, int[] patch_size, bool shannon, Tensor? class_mask) "
      "-> (Tensor entropy, Tensor mean_conf, Tensor count)");

  // SPEC §6. x (B,C,*S), att (B,M,*S) -> x * (2 - U).
  m.def("uafs_fwd(Tensor x, Tensor att) -> Tensor");
  m.def("uafs_bwd(Tensor grad_out, Tensor x, Tensor att) -> (Tensor grad_x, Tensor grad_att)");
}
