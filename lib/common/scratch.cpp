#include "common/scratch.hpp"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

namespace im2gemm::detail {

namespace {

struct ScratchBuffer {
  void* data = nullptr;
  std::size_t capacity = 0;
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data); }
};

thread_local ScratchBuffer t_scratch;
std::atomic<int> g_fail_thread{-1};  // set_fail_scratch_thread

}  // namespace

void set_fail_scratch_thread(int t) { g_fail_thread.store(t); }

float* thread_scratch(std::size_t bytes) noexcept {
  if (omp_get_thread_num() == g_fail_thread.load(std::memory_order_relaxed)) {
    // The test hook: a slow failure, so that a thread not waiting for the others would show.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return nullptr;
  }
  ScratchBuffer& s = t_scratch;
  if (bytes == 0) bytes = 64;
  if (s.capacity < bytes) {
    const std::size_t rounded = (bytes + 4095) / 4096 * 4096;
    std::free(s.data);
    s.data = std::aligned_alloc(64, rounded);
    s.capacity = s.data ? rounded : 0;
  }
  return static_cast<float*>(s.data);
}

}  // namespace im2gemm::detail
