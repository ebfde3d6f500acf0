// Public convolution entry points. Until the im2col + sgemm fast path lands these validate
// and call the reference loops.
#include "common/checks.hpp"
#include "im2gemm/conv2d.hpp"
#include "im2gemm/reference.hpp"

namespace im2gemm {

void conv2d_forward(const Conv2dShape& s, std::span<const float> x, std::span<const float> w,
                    std::span<const float> bias, std::span<float> y, Activation act) {
  reference::conv2d_forward(s, x, w, bias, y, act);
}

void conv2d_backward_data(const Conv2dShape& s, std::span<const float> dy,
                          std::span<const float> w, std::span<float> dx,
                          Activation input_activation, std::span<const float> x) {
  reference::conv2d_backward_data(s, dy, w, dx, input_activation, x);
}

void conv2d_backward_weights(const Conv2dShape& s, std::span<const float> x,
                             std::span<const float> dy, std::span<float> dw,
                             std::span<float> db) {
  reference::conv2d_backward_weights(s, x, dy, dw, db);
}

}  // namespace im2gemm
