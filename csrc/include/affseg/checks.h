// Argument checks shared by the CPU and CUDA torch glue. The Python API validates user input with
// ValueError/TypeError before any kernel runs; these TORCH_CHECKs guard direct torch.ops.affseg calls.
#pragma once
#include <ATen/ATen.h>

#define AFFSEG_CHECK_FLOAT(t)                                                                  \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble, #t,       \
              " must be float32 or float64, got ", (t).scalar_type())
#define AFFSEG_CHECK_DIM(t, d) TORCH_CHECK((t).dim() == (d), #t, " must have ", d, " dims, got ", (t).dim())
#define AFFSEG_CHECK_SAME_DTYPE(a, b) \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), #a " and " #b " must share a dtype")
#define AFFSEG_CHECK_DEVICE(t, dev) TORCH_CHECK((t).device().type() == (dev), #t " is on the wrong device")
