// AVX2 + FMA micro-kernel: an MR x (8*NV) tile of C in MR*NV ymm accumulators, columns on the
// lanes, rows of A broadcast. Compiled with -mavx2 -mfma (meson: the avx2 kernel library);
// called only when the CPU has them. MR*NV + NV + 1 <= 16 ymm registers.
#include <immintrin.h>

#include "gemm/gemm.hpp"

namespace im2gemm::detail::gemm {

namespace {

template <int MR, int NV>
inline void ukernel(const Tile& t) {
  static_assert(MR * NV + NV + 1 <= 16, "accumulators and operands must fit in 16 ymm");
  constexpr int NR = 8 * NV;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i mask[NV];
  for (int v = 0; v < NV; ++v) {
    mask[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.n - 8 * v), iota);
  }
  const float* ar[MR];
  for (int i = 0; i < MR; ++i) ar[i] = t.a + (i < t.m ? i : 0) * t.lda;

  __m256 acc[MR][NV];
  if (t.accumulate) {
    for (int i = 0; i < MR; ++i) {
      for (int v = 0; v < NV; ++v) {
        acc[i][v] = i < t.m ? _mm256_maskload_ps(t.c + i * t.ldc + 8 * v, mask[v])
                            : _mm256_setzero_ps();
      }
    }
  } else {
    for (int i = 0; i < MR; ++i) {
      const __m256 b0 = t.bias ? _mm256_set1_ps(t.bias[i < t.m ? i : 0]) : _mm256_setzero_ps();
      for (int v = 0; v < NV; ++v) acc[i][v] = b0;
    }
  }

  const float* b = t.b;
  const std::int64_t k = t.k;
  for (std::int64_t kk = 0; kk < k; ++kk) {
    __m256 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + 8 * v);
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(ar[i] + kk);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
    b += NR;
  }

  if (t.relu) {
    const __m256 z = _mm256_setzero_ps();
    for (int i = 0; i < MR; ++i) {
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_max_ps(acc[i][v], z);
    }
  }
  for (int i = 0; i < MR; ++i) {
    if (i >= t.m) break;
    for (int v = 0; v < NV; ++v) _mm256_maskstore_ps(t.c + i * t.ldc + 8 * v, mask[v], acc[i][v]);
  }
}

}  // namespace

void sgemm_ukernel_6x16_avx2(const Tile& t) { ukernel<6, 2>(t); }

}  // namespace im2gemm::detail::gemm
