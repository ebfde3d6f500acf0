// Average pooling as PyTorch's avg_pool2d computes it: each window's cells summed in
// row-major order from zero, divided by the window's divisor (count_include_pad: the cells
// inside the padded input; otherwise the cells inside the input).
#include <algorithm>

#include "common/checks.hpp"
#include "im2gemm/reference.hpp"

namespace im2gemm::reference {

namespace {

// The window of output (oh, ow): input rows [h0, h1) and columns [w0, w1), already clipped to
// the input, and its divisor.
struct Window {
  std::int64_t h0, h1, w0, w1;
  float divisor;
};

Window window(const AvgPool2dShape& s, std::int64_t oh, std::int64_t ow) {
  const std::int64_t H = s.in_height, W = s.in_width;
  std::int64_t h0 = oh * s.stride_height - s.pad_height;
  std::int64_t w0 = ow * s.stride_width - s.pad_width;
  // Clipped to the padded input first: that is the count_include_pad divisor.
  std::int64_t h1 = std::min(h0 + s.kernel_height, H + s.pad_height);
  std::int64_t w1 = std::min(w0 + s.kernel_width, W + s.pad_width);
  const std::int64_t padded_cells = (h1 - h0) * (w1 - w0);
  h0 = std::max<std::int64_t>(h0, 0);
  w0 = std::max<std::int64_t>(w0, 0);
  h1 = std::min(h1, H);
  w1 = std::min(w1, W);
  const std::int64_t cells = s.count_include_pad ? padded_cells : (h1 - h0) * (w1 - w0);
  return Window{h0, h1, w0, w1, static_cast<float>(cells)};
}

}  // namespace

void avgpool2d_forward(const AvgPool2dShape& s, std::span<const float> x, std::span<float> y) {
  detail::check_avgpool2d_forward(s, x, y);
  const std::int64_t H = s.in_height, W = s.in_width, OH = s.out_height(), OW = s.out_width();
  for (std::int64_t p = 0; p < s.batch * s.channels; ++p) {
    const float* plane = x.data() + p * H * W;
    for (std::int64_t oh = 0; oh < OH; ++oh) {
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        const Window win = window(s, oh, ow);
        float sum = 0.0f;
        for (std::int64_t ih = win.h0; ih < win.h1; ++ih) {
          for (std::int64_t iw = win.w0; iw < win.w1; ++iw) sum += plane[ih * W + iw];
        }
        // PyTorch adds the quotient to a zeroed output: an underflow to -0 becomes +0.
        y[(p * OH + oh) * OW + ow] = 0.0f + sum / win.divisor;
      }
    }
  }
}

void avgpool2d_backward(const AvgPool2dShape& s, std::span<const float> dy, std::span<float> dx) {
  detail::check_avgpool2d_backward(s, dy, dx);
  const std::int64_t H = s.in_height, W = s.in_width, OH = s.out_height(), OW = s.out_width();
  for (auto& v : dx) v = 0.0f;
  for (std::int64_t p = 0; p < s.batch * s.channels; ++p) {
    float* plane = dx.data() + p * H * W;
    for (std::int64_t oh = 0; oh < OH; ++oh) {
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        const Window win = window(s, oh, ow);
        const float g = dy[(p * OH + oh) * OW + ow] / win.divisor;
        for (std::int64_t ih = win.h0; ih < win.h1; ++ih) {
          for (std::int64_t iw = win.w0; iw < win.w1; ++iw) plane[ih * W + iw] += g;
        }
      }
    }
  }
}

}  // namespace im2gemm::reference
