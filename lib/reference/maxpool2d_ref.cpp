// The seed's max-pooling loops with the rules the seed leaves out: batch and padding, padded
// cells never win, first maximum in row-major order on ties, NaN wins, overlapping windows
// add up in backward.
#include <cmath>

#include "common/checks.hpp"
#include "im2gemm/reference.hpp"

namespace im2gemm::reference {

void maxpool2d_forward(const MaxPool2dShape& s, std::span<const float> x, std::span<float> y,
                       std::span<std::int32_t> argmax) {
  detail::check_maxpool2d_forward(s, x, y, argmax);
  const std::int64_t H = s.in_height, W = s.in_width, OH = s.out_height(), OW = s.out_width();
  for (std::int64_t p = 0; p < s.batch * s.channels; ++p) {
    const float* plane = x.data() + p * H * W;
    for (std::int64_t oh = 0; oh < OH; ++oh) {
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        std::int64_t best = -1;  // no real cell seen yet
        for (std::int64_t kh = 0; kh < s.kernel_height; ++kh) {
          const std::int64_t ih = oh * s.stride_height - s.pad_height + kh;
          if (ih < 0 || ih >= H) continue;  // padding never wins
          for (std::int64_t kw = 0; kw < s.kernel_width; ++kw) {
            const std::int64_t iw = ow * s.stride_width - s.pad_width + kw;
            if (iw < 0 || iw >= W) continue;
            const std::int64_t i = ih * W + iw;
            if (best < 0) {
              best = i;  // the first real cell: also the answer for an all -inf window
            } else if (std::isnan(plane[best])) {
              // the first NaN stays
            } else if (std::isnan(plane[i]) || plane[i] > plane[best]) {
              best = i;  // strict '>': the first maximum wins ties
            }
          }
        }
        // pad < kernel guarantees every window holds a real cell.
        y[(p * OH + oh) * OW + ow] = plane[best];
        argmax[(p * OH + oh) * OW + ow] = static_cast<std::int32_t>(best);
      }
    }
  }
}

void maxpool2d_backward(const MaxPool2dShape& s, std::span<const float> dy,
                        std::span<const std::int32_t> argmax, std::span<float> dx) {
  detail::check_maxpool2d_backward(s, dy, argmax, dx);
  const std::int64_t HW = s.in_height * s.in_width, OHW = s.out_height() * s.out_width();
  for (auto& v : dx) v = 0.0f;
  for (std::int64_t p = 0; p < s.batch * s.channels; ++p) {
    for (std::int64_t o = 0; o < OHW; ++o) {
      dx[p * HW + argmax[p * OHW + o]] += dy[p * OHW + o];  // overlapping windows add up
    }
  }
}

}  // namespace im2gemm::reference
