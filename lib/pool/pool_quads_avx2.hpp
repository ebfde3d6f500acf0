// Internal: the AVX2 load of two quads (lib/pool/pool_quads.hpp). Included by the AVX2 pooling
// files after their target pragma and <immintrin.h>.
#pragma once

namespace im2gemm::detail {

/// Lanes 0-3 from pa, 4-7 from pb, 8 floats each: lane l gets float 2*(l % 4) in `even` and
/// 2*(l % 4) + 1 in `odd` (the left and right cells of the quads' windows in one row).
inline void load_quads_avx2(const float* pa, const float* pb, __m256& even, __m256& odd) {
  const __m256 a = _mm256_loadu_ps(pa), b = _mm256_loadu_ps(pb);
  const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

}  // namespace im2gemm::detail
