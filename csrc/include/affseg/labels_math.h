// Patch label ratios (SPEC §1): window clipping and summed-area-table (SAT) inclusion–exclusion.
//
// Math: for class k, sat_k[x0+1, x1+1(, x2+1)] = #pixels of class k in [0, x0] × [0, x1] (× [0, x2]),
// with a leading zero slice per dim, so the table of an image with spatial sizes S has shape
// Π(S_d + 1). The count of a box [lo, hi) is Σ over the 2^ndim corners of ±sat at the corner,
// sign (-1)^(number of lower bounds). A window of side L around centre c spans
// c - L/2 … c - L/2 + L - 1 per dim, clipped to [0, S_d); a window fully outside is empty.
//
// Memory traffic: building the tables reads the labels once and writes B·K·Π(S_d+1) int32 counts
// (then each scan pass reads and writes them once per dim); the gather reads 2^ndim table entries
// per (centre, window, class). The cost of a window does not depend on its size.
//
// Limits: counts are int32, so an image (one batch item) must hold fewer than 2^31 pixels; the
// torch glue checks it. Labels outside [0, K) (the ignore_index included) count in no class.
#pragma once
#include <cstdint>

#include "affseg/macros.h"

namespace affseg {
namespace labels {

// Clipped half-open window [lo, hi) of side `window` around `center` in an axis of `size` pixels.
AFFSEG_HD void window_bounds(int64_t center, int64_t window, int64_t size, int64_t* lo, int64_t* hi) {
  const int64_t start = center - window / 2;
  const int64_t end = start + window;
  *lo = start < 0 ? 0 : (start > size ? size : start);
  *hi = end < 0 ? 0 : (end > size ? size : end);
  if (*hi < *lo) *hi = *lo;
}

// Which class a pixel counts in, or -1 when it counts in none (ignore_index or out of range).
AFFSEG_HD int64_t counted_class(int64_t label, int64_t num_classes, bool has_ignore, int64_t ignore_index) {
  if (has_ignore && label == ignore_index) return -1;
  return (label >= 0 && label < num_classes) ? label : -1;
}

// Count of the box [lo0, hi0) × [lo1, hi1) from a 2D table with row stride `s0` (= S1 + 1).
AFFSEG_HD int32_t box_count_2d(const int32_t* sat, int64_t s0, int64_t lo0, int64_t hi0, int64_t lo1, int64_t hi1) {
  return sat[hi0 * s0 + hi1] - sat[lo0 * s0 + hi1] - sat[hi0 * s0 + lo1] + sat[lo0 * s0 + lo1];
}

// Count of the box [lo0, hi0) × [lo1, hi1) × [lo2, hi2) from a 3D table with strides s0, s1.
AFFSEG_HD int32_t box_count_3d(const int32_t* sat, int64_t s0, int64_t s1, int64_t lo0, int64_t hi0, int64_t lo1,
                               int64_t hi1, int64_t lo2, int64_t hi2) {
  const int32_t upper = box_count_2d(sat + hi0 * s0, s1, lo1, hi1, lo2, hi2);
  const int32_t lower = box_count_2d(sat + lo0 * s0, s1, lo1, hi1, lo2, hi2);
  return upper - lower;
}

// φ_k = count_k / total in float32, as the reference divides (total clamped to 1: φ = 0 when empty).
// The count arrives already converted to float (kernels stage counts in the φ output).
AFFSEG_HD float ratio_of_float(float count, int32_t total) {
  return count / static_cast<float>(total > 0 ? total : 1);
}

}  // namespace labels
}  // namespace affseg
