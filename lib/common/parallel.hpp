// Internal: the one way the passes enter an OpenMP region (see threads.hpp for why OpenBLAS
// then stays on one thread).
#pragma once

#include <omp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#include "common/scratch.hpp"
#include "common/threads.hpp"

namespace im2gemm::detail {

/// Runs body(t, nthr, scratch) on `threads` threads, each with its own scratch of at least
/// scratch_bytes (64-byte aligned). Every thread allocates before any thread starts: if one
/// allocation fails, no body runs, nothing is written and std::bad_alloc is thrown.
/// run_inline: run on the calling thread with no OpenMP region at all (a region costs more
/// than a tiny problem's arithmetic).
template <class Body>
void run_with_scratch(int threads, bool run_inline, std::size_t scratch_bytes, Body&& body) {
  if (run_inline) {
    float* s = thread_scratch(scratch_bytes);
    if (s == nullptr) throw std::bad_alloc();
    body(std::int64_t{0}, std::int64_t{1}, s);
    return;
  }
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    sgemm_single_thread_guard();
    const std::int64_t t = omp_get_thread_num(), nthr = omp_get_num_threads();
    float* s = thread_scratch(scratch_bytes);
    if (s == nullptr) failed.store(true);
#pragma omp barrier
    if (!failed.load()) body(t, nthr, s);
  }
  if (failed.load()) throw std::bad_alloc();
}

}  // namespace im2gemm::detail
