// Public max-pooling entry points. Until the vectorised fast path lands these validate and
// call the reference loops.
#include "im2gemm/maxpool2d.hpp"
#include "im2gemm/reference.hpp"

namespace im2gemm {

void maxpool2d_forward(const MaxPool2dShape& s, std::span<const float> x, std::span<float> y,
                       std::span<std::int32_t> argmax) {
  reference::maxpool2d_forward(s, x, y, argmax);
}

void maxpool2d_backward(const MaxPool2dShape& s, std::span<const float> dy,
                        std::span<const std::int32_t> argmax, std::span<float> dx) {
  reference::maxpool2d_backward(s, dy, argmax, dx);
}

}  // namespace im2gemm
