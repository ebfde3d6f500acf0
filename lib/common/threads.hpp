// Internal: the one owner of the threads.
// Every parallel region of the library runs `#pragma omp parallel num_threads(n)` with
// n = num_threads(); OpenBLAS (the OpenMP build) called inside an active parallel region runs
// single-threaded. Inside a region, call sgemm_single_thread_guard() first so that a team of
// one (which OpenMP does not count as "in parallel") also keeps OpenBLAS to one thread.
#pragma once

namespace im2gemm::detail {

/// Sets this implicit task's nthreads ICV to 1: OpenBLAS then sees omp_get_max_threads() == 1
/// and never starts threads of its own from inside our regions.
void sgemm_single_thread_guard();

}  // namespace im2gemm::detail
