// AVX-512 micro-kernel: an MR x (16*NV) tile of C in MR*NV zmm accumulators, pixels (columns)
// on the lanes, rows of A broadcast from memory. Compiled with -mavx512f/bw/vl/dq -mfma
// (meson: the avx512 kernel library); called only when the CPU has them.
//
// Invariant checked by test/meson.build's assembly check: the k loop keeps every accumulator
// in a register (no stack traffic), which needs MR*NV + NV + 1 <= 32 zmm registers.
#include <immintrin.h>

#include "gemm/gemm.hpp"

namespace im2gemm::detail::gemm {

namespace {

// NV vectors of C computed, of a panel of NP vectors (the B row stride): a tile whose n
// leaves the panel's last vectors empty does not multiply them.
template <int MR, int NV, int NP>
inline void ukernel(const Tile& t) {
  static_assert(MR * NV + NV + 1 <= 32, "accumulators and operands must fit in 32 zmm");
  static_assert(NV <= NP);
  constexpr int NR = 16 * NP;
  __mmask16 mask[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int r = t.n - 16 * v;
    mask[v] = r >= 16 ? __mmask16(0xFFFF) : r <= 0 ? __mmask16(0) : __mmask16((1u << r) - 1);
  }
  // The tile has exactly MR rows (the dispatcher below picks the kernel of its height); its
  // column edge is masked, branch-free, so that the accumulators stay in registers from the
  // first load to the last store.
  const float* ar[MR];
  float* cr[MR];
  for (int i = 0; i < MR; ++i) {
    ar[i] = t.a + i * t.lda;
    cr[i] = t.c + i * t.ldc;
  }
  const __mmask16 load_all = t.accumulate ? __mmask16(0xFFFF) : __mmask16(0);

  // Every loop over the accumulators unrolled in full (the pragmas): with an index left in
  // the set-up loop, gcc kept acc as an array on the stack, every accumulator stored there
  // after the set-up and after the k loop and reloaded for the stores.
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m512 b0 = t.bias ? _mm512_set1_ps(t.bias[i]) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[i][v] = _mm512_mask_loadu_ps(b0, mask[v] & load_all, cr[i] + 16 * v);
    }
  }

  const float* b = t.b;
  const std::int64_t k = t.k;
  for (std::int64_t kk = 0; kk < k; ++kk) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(ar[i][kk]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
    }
    b += NR;
  }

  // ReLU without a branch: lanes of the mask (all of them, or none without relu) take
  // max(acc, 0) (0 for NaN, as before), the others keep acc. A conditional update made gcc
  // give the accumulators a home on the stack: every one stored there after the set-up and
  // after the k loop, and reloaded for the stores.
  const __m512 z = _mm512_setzero_ps();
  const __mmask16 relu = t.relu ? __mmask16(0xFFFF) : __mmask16(0);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_mask_max_ps(acc[i][v], relu, acc[i][v], z);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(cr[i] + 16 * v, mask[v], acc[i][v]);
  }
}

template <int MR>
inline void ukernel_rows(const Tile& t) {
  if (t.n <= 16) return ukernel<MR, 1, 3>(t);
  if (t.n <= 32) return ukernel<MR, 2, 3>(t);
  ukernel<MR, 3, 3>(t);
}

}  // namespace

// Tiles of at most 16 or 32 columns (a block's last panel: folded 7x7 images, row ends)
// run one or two vectors wide, and a tile of m < 8 rows runs the kernel m rows tall: the
// driver cuts M into tiles of equal height, so M = 50 runs 8 + 6 x 7 rows, and 8-row tiles
// would compute 56 rows. Every kernel gets a tile of exactly its height (m <= 8 = mr).
void sgemm_ukernel_8x48_avx512(const Tile& t) {
  switch (t.m) {
    case 1: return ukernel_rows<1>(t);
    case 2: return ukernel_rows<2>(t);
    case 3: return ukernel_rows<3>(t);
    case 4: return ukernel_rows<4>(t);
    case 5: return ukernel_rows<5>(t);
    case 6: return ukernel_rows<6>(t);
    case 7: return ukernel_rows<7>(t);
    default: return ukernel_rows<8>(t);
  }
}

}  // namespace im2gemm::detail::gemm
