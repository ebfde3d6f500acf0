// Internal: per-thread scratch of the convolution and pooling passes (one buffer per thread,
// shared by both: a call uses it only while it runs).
#pragma once

#include <cstddef>

namespace im2gemm::detail {

/// A 64-byte aligned buffer of at least `bytes` bytes owned by the calling thread: grown on
/// demand, kept for the thread's lifetime and reused by its later calls (contents undefined).
/// Returns nullptr if the allocation fails. Never shared between threads, so calls from several
/// user threads (each with its own OpenMP team) never touch one another's scratch.
float* thread_scratch(std::size_t bytes) noexcept;

/// Test hook: from now on, thread_scratch fails on OpenMP thread `t` (omp_get_thread_num(),
/// 0 outside a region) as if memory ran out, after a 20 ms delay (-1: none). Tests check that
/// no output is then written, also by the threads whose allocation succeeded first.
void set_fail_scratch_thread(int t);

}  // namespace im2gemm::detail
