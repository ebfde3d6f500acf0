// The portable micro-kernel: plain loops over the same packed layout and the same Tile
// contract as the vector kernels. It is the scalar row of the configuration table and the
// oracle the tests hold every other kernel to (same summation order per element: k ascending,
// starting from the bias, zero or C).
#include "gemm/gemm.hpp"

namespace im2gemm::detail::gemm {

void ukernel_ref(const Tile& t, int nr) {
  for (int i = 0; i < t.m; ++i) {
    const float* a = t.a + i * t.lda;
    float* c = t.c + i * t.ldc;
    for (int j = 0; j < t.n; ++j) {
      float acc = t.accumulate ? c[j] : t.bias ? t.bias[i] : 0.0f;
      for (std::int64_t kk = 0; kk < t.k; ++kk) acc += a[kk] * t.b[kk * nr + j];
      c[j] = t.relu ? (acc > 0.0f ? acc : 0.0f) : acc;
    }
  }
}

void sgemm_ukernel_4x16_scalar(const Tile& t) {
  // Register-friendly order for the compiler: a 4 x 16 block of accumulators.
  constexpr int MR = 4, NR = 16;
  float acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      acc[i][j] = t.accumulate ? (i < t.m && j < t.n ? t.c[i * t.ldc + j] : 0.0f)
                  : t.bias     ? t.bias[i < t.m ? i : 0]
                               : 0.0f;
    }
  }
  const float* ar[MR];
  for (int i = 0; i < MR; ++i) ar[i] = t.a + (i < t.m ? i : 0) * t.lda;
  for (std::int64_t kk = 0; kk < t.k; ++kk) {
    const float* b = t.b + kk * NR;
    for (int i = 0; i < MR; ++i) {
      const float a = ar[i][kk];
      for (int j = 0; j < NR; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < t.m; ++i) {
    for (int j = 0; j < t.n; ++j) {
      const float v = acc[i][j];
      t.c[i * t.ldc + j] = t.relu ? (v > 0.0f ? v : 0.0f) : v;
    }
  }
}

}  // namespace im2gemm::detail::gemm
