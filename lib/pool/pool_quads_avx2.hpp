// Internal: AVX2 loads shared by the pooling files: stride-2 loads and the load of two quads
// (lib/pool/pool_quads.hpp). Included by the AVX2 pooling files after their target pragma and
// <immintrin.h>.
#pragma once

namespace im2gemm::detail {

/// The even floats of p[0, 16) in shuffle order: p0 p2 p8 p10 | p4 p6 p12 p14 (one in-lane
/// shuffle, no lane crossing). s2_order_avx2 puts a vector in that order into p0 p2 ... p14.
inline __m256 even_s2_avx2(__m256 lo, __m256 hi) {
  return _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
}
inline __m256 s2_order_avx2(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256i s2_order_avx2(__m256i v) {
  return _mm256_permute4x64_epi64(v, _MM_SHUFFLE(3, 1, 2, 0));
}
/// p[0], p[2], ..., p[14] in shuffle order (reads p[0, 16)).
inline __m256 load_s2_avx2(const float* p) {
  return even_s2_avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8));
}
/// p[1], p[3], ..., p[15] in the same shuffle order, from the same two loads as
/// load_s2_avx2(p): the odd tap after an even one shares its loads (reads p[0, 16)).
inline __m256 load_s2_odd_avx2(const float* p) {
  return _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _MM_SHUFFLE(3, 1, 3, 1));
}
/// The same for lanes [0, n) only (1 <= n <= 8), reading p[0, 2n - 1) and nothing else; the
/// other lanes zero.
inline __m256 load_n_s2_avx2(const float* p, int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int c = 2 * n - 1;
  const __m256 lo = _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(c), idx));
  const __m256 hi =
      c > 8 ? _mm256_maskload_ps(p + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(c - 8), idx))
            : _mm256_setzero_ps();
  return even_s2_avx2(lo, hi);
}

/// Lanes 0-3 from pa, 4-7 from pb, 8 floats each: lane l gets float 2*(l % 4) in `even` and
/// 2*(l % 4) + 1 in `odd` (the left and right cells of the quads' windows in one row).
inline void load_quads_avx2(const float* pa, const float* pb, __m256& even, __m256& odd) {
  const __m256 a = _mm256_loadu_ps(pa), b = _mm256_loadu_ps(pb);
  const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  even = s2_order_avx2(e);
  odd = s2_order_avx2(o);
}

}  // namespace im2gemm::detail
