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

}  // namespace im2gemm::detail
