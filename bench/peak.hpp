// The machine's FMA peak, measured in the same run as the benchmarks that quote a fraction
// of it: independent FMA chains (12 per thread) on every thread at once, best of 5 tries.
#pragma once

#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace im2gemm::bench {

__attribute__((target("avx512f"))) inline double fma_loop_avx512(std::int64_t iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(1.0f + 1e-7f * static_cast<float>(i));
  const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  }
  __m512 sum = a[0];
  for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, a[i]);
  float out[16];
  _mm512_storeu_ps(out, sum);
  volatile float sink = out[0];
  (void)sink;
  return static_cast<double>(iters) * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"))) inline double fma_loop_avx2(std::int64_t iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + 1e-7f * static_cast<float>(i));
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  }
  __m256 sum = a[0];
  for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, a[i]);
  float out[8];
  _mm256_storeu_ps(out, sum);
  volatile float sink = out[0];
  (void)sink;
  return static_cast<double>(iters) * 12 * 8 * 2;
}

/// GFLOP/s of `threads` threads running FMA chains at once (AVX-512 if the CPU has it and
/// avx512 is true, else AVX2); 0 without FMA.
inline double measure_fma_peak(int threads, bool avx512 = true) {
  avx512 = avx512 && __builtin_cpu_supports("avx512f");
  if (!avx512 && !__builtin_cpu_supports("fma")) return 0.0;
  const std::int64_t iters = 20'000'000;
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    double total = 0.0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total)
    total += avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, total / sec * 1e-9);
  }
  return best;
}

/// The same on one thread, timed by the thread's CPU clock rather than the wall clock: the
/// peak of a core while this thread has it, which a shared machine's other load does not
/// lower (compare with other CPU-time figures, e.g. Google Benchmark's CPU column).
inline double measure_fma_peak_cpu_time(bool avx512 = true) {
  avx512 = avx512 && __builtin_cpu_supports("avx512f");
  if (!avx512 && !__builtin_cpu_supports("fma")) return 0.0;
  auto cpu_now = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = cpu_now();
    const double flops = avx512 ? fma_loop_avx512(20'000'000) : fma_loop_avx2(20'000'000);
    best = std::max(best, flops / (cpu_now() - t0) * 1e-9);
  }
  return best;
}

}  // namespace im2gemm::bench
