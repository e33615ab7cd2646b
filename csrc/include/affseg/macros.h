// Shared by the CPU (g++) and CUDA (nvcc) builds: the arithmetic in csrc/include/affseg/*_math.h is
// written once as AFFSEG_HD functions, so the CPU tests exercise exactly the math the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define AFFSEG_HD __host__ __device__ __forceinline__
#else
#define AFFSEG_HD inline
#endif
