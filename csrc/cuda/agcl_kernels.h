// Torch-free CUDA launchers of the Semi-AGCL ops (SPEC §7); kernels in agcl_kernels.cu, torch glue in
// agcl.cu (which checks these limits before launching). T is float or double.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace affseg {
namespace cuda {

// affinity_matrix(_bwd): node dimension D (one shared-memory tile of y_s columns and y_t rows holds
// every dimension), and rows N (the grid's y dimension counts 32-row tiles in the forward).
constexpr int64_t kAffinityMaxDim = 64;
constexpr int64_t kAffinityMaxRows = int64_t(65535) * 32;

// hard_negatives / queue_lse_bwd / mixed_logits(_bwd): channels C (the query row is staged in
// shared memory; the backwards keep C / 256 accumulators per thread), hard-list length H (a block keeps
// its top list and a candidate buffer, next_pow2(H + 256) ≤ 2048 entries, in shared memory) and queue
// length Q (int32 indices in shared memory).
constexpr int64_t kAgclMaxDim = 1024;
constexpr int64_t kAgclMaxHard = 1024;
constexpr int64_t kAgclMaxQueue = int64_t(2147483647);

// y_t (N, D), y_s (M, D) -> A (N, M).
template <typename T>
void affinity_fwd_launch(const T* y_t, const T* y_s, int64_t N, int64_t M, int64_t D, T inv_two_sigma2, bool l1,
                         T* out, cudaStream_t stream);

// grad_a (N, M) -> grad_s (M, D), every element written.
template <typename T>
void affinity_bwd_launch(const T* grad_a, const T* y_t, const T* y_s, int64_t N, int64_t M, int64_t D,
                         T inv_two_sigma2, bool l1, T* grad_s, cudaStream_t stream);

// q (B, C), neg (Q, C), q_cls (B,), neg_cls (Q,) -> lse (B,), hard_idx (B, H), hard_count (B,);
// H = min(n_hard, Q) ≤ kAgclMaxHard.
template <typename T>
void hard_negatives_launch(const T* q, const T* neg, const T* neg_scale, const int64_t* q_cls, const int64_t* neg_cls, int64_t B,
                           int64_t Q, int64_t C, int64_t H, T inv_tau, bool use_classes, T* lse, int64_t* hard_idx,
                           int64_t* hard_count, cudaStream_t stream);

// grad_lse (B,), lse (B,) -> grad_q (B, C), every element written.
template <typename T>
void queue_lse_bwd_launch(const T* grad_lse, const T* q, const T* neg, const T* neg_scale, const int64_t* q_cls, const int64_t* neg_cls,
                          const T* lse, int64_t B, int64_t Q, int64_t C, T inv_tau, bool use_classes, T* grad_q,
                          cudaStream_t stream);

// alpha (Q,), hard_idx (B, H), hard_count (B,), pairs (B, P, 2) -> logits (B, P).
template <typename T>
void mixed_logits_launch(const T* q, const T* neg, const T* neg_scale, const T* alpha, const int64_t* hard_idx, const int64_t* hard_count,
                         const int64_t* pairs, int64_t B, int64_t Q, int64_t C, int64_t H, int64_t P, T inv_tau,
                         T* out, cudaStream_t stream);

// grad (B, P) -> grad_q (B, C), every element written.
template <typename T>
void mixed_logits_bwd_launch(const T* grad, const T* q, const T* neg, const T* neg_scale, const T* alpha, const int64_t* hard_idx,
                             const int64_t* hard_count, const int64_t* pairs, int64_t B, int64_t Q, int64_t C,
                             int64_t H, int64_t P, T inv_tau, T* grad_q, cudaStream_t stream);

}  // namespace cuda
}  // namespace affseg
