// The dot-product precision of the CUDA similarity kernels (SPEC §8), host- and device-visible.
// The torch glue maps the ops' `input_precision` string to it (affseg/glue_checks.h
// dot_precision_code); affseg._backend.dot_precision picks the string from the inputs' dtype and
// torch.get_float32_matmul_precision().
#pragma once

namespace affseg {
namespace cuda {

enum DotPrecision : int {
  kDotIeee = 0,  // fp32/fp64 FMA (the only mode for float64)
  kDotTf32 = 1,  // tensor cores, tf32 operands (10-bit mantissa, fp32 range), fp32 accumulation
  kDotBf16 = 2,  // tensor cores, bf16 operands (8-bit mantissa), fp32 accumulation
};

}  // namespace cuda
}  // namespace affseg
