#include "common/scratch.hpp"

#include <cstdlib>

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

}  // namespace

float* thread_scratch(std::size_t bytes) noexcept {
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
