// AVX2 + FMA micro-kernel: an MR x (8*NV) tile of C in MR*NV ymm accumulators, columns on the
// lanes, rows of A broadcast. Compiled with -mavx2 -mfma (meson: the avx2 kernel library);
// called only when the CPU has them. MR*NV + NV + 1 <= 16 ymm registers.
#include <immintrin.h>

#include "gemm/gemm.hpp"

namespace im2gemm::detail::gemm {

namespace {

// Lanes [0, n - 8v) of vector v, as a maskload/maskstore mask.
inline __m256i lane_mask(int n, int v) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8 * v),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Floats of one k row of a packed B micro-panel (the configuration's NR).
constexpr int kPanelLanes = 16;

// noinline: one function per height, each with its own register allocation (inlined into one
// dispatcher, gcc spilled the 2-row kernel's accumulators). NV = 1 computes the first 8 lanes
// of the panel only (a tile of at most 8 columns).
template <int MR, int NV>
__attribute__((noinline)) void ukernel(const Tile& t) {
  static_assert(MR * NV + NV + 1 <= 16, "accumulators and operands must fit in 16 ymm");
  static_assert(8 * NV <= kPanelLanes);
  constexpr int NR = 8 * NV;
  // Branch-free edges, so that the accumulators stay in registers (rows past m read row 0 of
  // A and C through clamped pointers; their C loads and stores are masked off entirely).
  const float* ar[MR];
  float* cr[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const int ii = i < t.m ? i : 0;
    ar[i] = t.a + ii * t.lda;
    cr[i] = t.c + ii * t.ldc;
  }

  // The lane masks are rebuilt after the k loop rather than kept: with them live, the 12
  // accumulators and 3 operands would not fit in the 16 ymm registers. Every loop over the
  // accumulators is unrolled in full (the pragmas): with an index left in one, gcc kept acc as
  // an array on the stack outside the k loop.
  __m256 acc[MR][NV];
  const bool full = t.m == MR && t.n == NR;
  if (full) {
    // A whole tile: plain loads and stores (the masked ones cost about 145 cycles a tile on
    // AMD Zen 3).
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 b0 = t.bias ? _mm256_set1_ps(t.bias[i]) : _mm256_setzero_ps();
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = t.accumulate ? _mm256_loadu_ps(cr[i] + 8 * v) : b0;
    }
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 b0 = t.bias ? _mm256_set1_ps(t.bias[i < t.m ? i : 0]) : _mm256_setzero_ps();
      const __m256i row = _mm256_set1_epi32(t.accumulate && i < t.m ? -1 : 0);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const __m256i lm = _mm256_and_si256(lane_mask(t.n, v), row);
        acc[i][v] =
            _mm256_blendv_ps(b0, _mm256_maskload_ps(cr[i] + 8 * v, lm), _mm256_castsi256_ps(lm));
      }
    }
  }

  const float* b = t.b;
  const std::int64_t k = t.k;
  // Four k steps per loop trip (measured: 79% -> 86% of the one-thread AVX2 FMA peak; 8 was
  // slower).
#pragma GCC unroll 4
  for (std::int64_t kk = 0; kk < k; ++kk) {
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + 8 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_set1_ps(ar[i][kk]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
    b += kPanelLanes;
  }

  // ReLU without a branch (a conditional update makes gcc keep the accumulators in memory).
  const __m256 z = _mm256_setzero_ps();
  const __m256 relu = _mm256_castsi256_ps(_mm256_set1_epi32(t.relu ? -1 : 0));
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[i][v] = _mm256_blendv_ps(acc[i][v], _mm256_max_ps(acc[i][v], z), relu);
  }
  if (full) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(cr[i] + 8 * v, acc[i][v]);
    }
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m256i row = _mm256_set1_epi32(i < t.m ? -1 : 0);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      _mm256_maskstore_ps(cr[i] + 8 * v, _mm256_and_si256(lane_mask(t.n, v), row), acc[i][v]);
    }
  }
}

// A tile of fewer than 6 rows runs an instantiation of that many rows: the FMAs of rows past m
// would be wasted work (multiply_block splits M into near-equal tiles, so m = 20 runs 5+5+5+5
// instead of 6+6+6+2 at the cost of 6+6+6+6).
template <int NV>
void ukernel_rows(const Tile& t) {
  switch (t.m) {
    case 6: return ukernel<6, NV>(t);
    case 5: return ukernel<5, NV>(t);
    case 4: return ukernel<4, NV>(t);
    case 3: return ukernel<3, NV>(t);
    case 2: return ukernel<2, NV>(t);
    default: return ukernel<1, NV>(t);
  }
}

}  // namespace

// A tile of at most 8 columns computes one vector a row, not two (a 7x7 plane's 49
// pixels: 3 panels and one column).
void sgemm_ukernel_6x16_avx2(const Tile& t) {
  if (t.n <= 8) return ukernel_rows<1>(t);
  ukernel_rows<2>(t);
}

}  // namespace im2gemm::detail::gemm
