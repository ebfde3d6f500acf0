// The B packs of the driver with AVX2. Transposing (sgemm_nt): 8 rows of X by 8 k at a time,
// one 8x8 register transpose, 8 stores of 8 lanes into the panel rows; edge lanes (past j1)
// and the k tail take the portable loop's per-element copy. Row-major (sgemm_nn): whole panels
// copied a row of nr floats at a time in 8-lane vectors (the portable loop, built for the
// baseline ISA, copied them 4 floats at a time with a length test per row); a panel reaching
// past j1 takes the portable copy. Compiled with -mavx2 -mfma (meson: the avx2 kernel
// library); also used by the AVX-512 configuration (48 lanes = 6 x 8).
#include <immintrin.h>

#include <algorithm>

#include "gemm/gemm.hpp"
#include "gemm/x86/transpose_avx2.hpp"

namespace im2gemm::detail::gemm {

namespace {

using i64 = std::int64_t;

// Whole panels [0, panels) of columns j0 + p*NR: rows [k0, k1) of B (row stride ldb).
template <int NR>
void copy_panels(const float* b, i64 ldb, i64 k0, i64 k1, i64 j0, i64 panels, float* dst,
                 i64 panel_stride) {
  for (i64 kk = k0; kk < k1; ++kk) {
    const float* s = b + kk * ldb + j0;
    float* d = dst + (kk - k0) * NR;
    for (i64 p = 0; p < panels; ++p, s += NR, d += panel_stride) {
      for (int l = 0; l < NR; l += 8) _mm256_storeu_ps(d + l, _mm256_loadu_ps(s + l));
    }
  }
}

}  // namespace

void pack_b_rows_avx2(const float* b, i64 ldb, i64 k0, i64 k1, i64 j0, i64 j1, int nr, float* dst,
                      i64 panel_stride) {
  const i64 whole = (j1 - j0) / nr;
  if (nr == 16) {
    copy_panels<16>(b, ldb, k0, k1, j0, whole, dst, panel_stride);
  } else if (nr == 48) {
    copy_panels<48>(b, ldb, k0, k1, j0, whole, dst, panel_stride);
  } else {
    pack_b_rows(b, ldb, k0, k1, j0, j1, nr, dst, panel_stride);
    return;
  }
  if (j0 + whole * nr < j1) {
    pack_b_rows(b, ldb, k0, k1, j0 + whole * nr, j1, nr, dst + whole * panel_stride, panel_stride);
  }
}

void pack_b_transposed_avx2(const float* x, i64 ldx, i64 k0, i64 k1, i64 j0, i64 j1, int nr,
                            float* dst, i64 panel_stride) {
  if (nr % 8 != 0) {
    pack_b_transposed(x, ldx, k0, k1, j0, j1, nr, dst, panel_stride);
    return;
  }
  for (i64 p = 0; j0 + p * nr < j1; ++p) {
    const i64 c0 = j0 + p * nr, n = std::min<i64>(nr, j1 - c0);
    float* d = dst + p * panel_stride;
    for (i64 l0 = 0; l0 < nr; l0 += 8) {
      const i64 nl = std::clamp<i64>(n - l0, 0, 8);
      i64 kk = k0;
      if (nl == 8) {
        const float* s = x + (c0 + l0) * ldx;
        for (; kk + 8 <= k1; kk += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ldx + kk);
          transpose8x8_avx2(r);
          for (int t = 0; t < 8; ++t) _mm256_storeu_ps(d + (kk - k0 + t) * nr + l0, r[t]);
        }
      }
      // The k tail, and lane groups that reach past j1 (zero there).
      for (; kk < k1; ++kk) {
        float* row = d + (kk - k0) * nr + l0;
        for (i64 l = 0; l < 8; ++l) row[l] = l < nl ? x[(c0 + l0 + l) * ldx + kk] : 0.0f;
      }
    }
  }
}

}  // namespace im2gemm::detail::gemm
