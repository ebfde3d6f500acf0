// Internal: the 8x8 register transpose of the AVX2 transposing packers (gemm's pack_b and
// backward weights' im2col pack). Include only from files compiled with -mavx2.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace im2gemm::detail {

/// r[i] = row i of an 8x8 block in, column i out.
inline void transpose8x8_avx2(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/// The transpose of 8 rows of 8 floats at src + l * stride (l < 8) into v[j] (lane l: row l's
/// float j), the half-row swap done by 128-bit loads instead of lane-crossing shuffles: 8
/// loads with inserts and 16 in-lane shuffles instead of 8 loads and 24 shuffles.
inline void load_transpose8x8_avx2(const float* src, std::int64_t stride, __m256 v[8]) {
  auto pair = [&](int l, int half) {  // rows l and l + 4, floats [4 * half, 4 * half + 4)
    const float* p = src + l * stride + 4 * half;
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)),
                                _mm_loadu_ps(p + 4 * stride), 1);
  };
  for (int half = 0; half < 2; ++half) {
    const __m256 a0 = pair(0, half), a1 = pair(1, half), a2 = pair(2, half), a3 = pair(3, half);
    const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    v[4 * half + 0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    v[4 * half + 1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    v[4 * half + 2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    v[4 * half + 3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  }
}

/// The inverse: v[j] lane l stored to dst[l * stride + j] (l, j < 8), the half-row swap done
/// by 128-bit stores.
inline void transpose8x8_store_avx2(const __m256 v[8], float* dst, std::int64_t stride) {
  for (int half = 0; half < 2; ++half) {
    const __m256* w = v + 4 * half;  // pixels [4 * half, 4 * half + 4)
    const __m256 t0 = _mm256_unpacklo_ps(w[0], w[1]), t1 = _mm256_unpackhi_ps(w[0], w[1]);
    const __m256 t2 = _mm256_unpacklo_ps(w[2], w[3]), t3 = _mm256_unpackhi_ps(w[2], w[3]);
    const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                         _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
    for (int l = 0; l < 4; ++l) {  // u[l]: rows l (low half) and l + 4 (high half)
      float* p = dst + l * stride + 4 * half;
      _mm_storeu_ps(p, _mm256_castps256_ps128(u[l]));
      _mm_storeu_ps(p + 4 * stride, _mm256_extractf128_ps(u[l], 1));
    }
  }
}

}  // namespace im2gemm::detail
