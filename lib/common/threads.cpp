#include <omp.h>

#include <atomic>
#include <string>

#include "common/checks.hpp"
#include "common/threads.hpp"

namespace im2gemm {

namespace {
std::atomic<int> g_threads{0};  // 0: OpenMP's default
}

void set_num_threads(int n) {
  if (n < 0) detail::fail("set_num_threads: n must be >= 0, got " + std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  const int d = omp_get_max_threads();
  return d > 0 ? d : 1;
}

}  // namespace im2gemm

namespace im2gemm::detail {

void sgemm_single_thread_guard() { omp_set_num_threads(1); }

}  // namespace im2gemm::detail
