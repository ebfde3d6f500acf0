// The seed's convolution loops, generalised to batch, groups, dilation and non-square
// stride/padding. Direct loops, double accumulation: the oracle, not a fast path.
// The padding is zeros that multiply (PyTorch's semantics, and what a lowered GEMM computes):
// a tap in the padding adds 0 * w (forward) or 0 * dy (backward weights), so a non-finite
// value facing the padding gives NaN. Backward data writes dx cells only: the padding
// receives nothing there.
#include <vector>

#include "common/activation_impl.hpp"
#include "common/checks.hpp"
#include "im2gemm/reference.hpp"

namespace im2gemm::reference {

void conv2d_forward(const Conv2dShape& s, std::span<const float> x, std::span<const float> w,
                    std::span<const float> bias, std::span<float> y, Activation act) {
  detail::check_conv2d_forward(s, x, w, bias, y, act);
  const std::int64_t OH = s.out_height(), OW = s.out_width();
  const std::int64_t Cg = s.in_channels / s.groups, Fg = s.out_channels / s.groups;
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t f = 0; f < s.out_channels; ++f) {
      const std::int64_t c0 = (f / Fg) * Cg;  // first input channel of f's group
      for (std::int64_t oh = 0; oh < OH; ++oh) {
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          double acc = bias.empty() ? 0.0 : bias[f];
          for (std::int64_t c = 0; c < Cg; ++c) {
            for (std::int64_t kh = 0; kh < s.kernel_height; ++kh) {
              const std::int64_t ih = oh * s.stride_height - s.pad_height + kh * s.dilation_height;
              const bool row_in = ih >= 0 && ih < s.in_height;
              for (std::int64_t kw = 0; kw < s.kernel_width; ++kw) {
                const std::int64_t iw = ow * s.stride_width - s.pad_width + kw * s.dilation_width;
                const double wv = w[((f * Cg + c) * s.kernel_height + kh) * s.kernel_width + kw];
                if (!row_in || iw < 0 || iw >= s.in_width) {
                  acc += 0.0 * wv;  // zero padding
                  continue;
                }
                acc +=
                    double(x[((n * s.in_channels + c0 + c) * s.in_height + ih) * s.in_width + iw]) *
                    wv;
              }
            }
          }
          y[((n * s.out_channels + f) * OH + oh) * OW + ow] = static_cast<float>(acc);
        }
      }
    }
  }
  detail::activation_forward_unchecked(act, y.data(), static_cast<std::int64_t>(y.size()));
}

// The seed's sensitivity map: a 'full' correlation of the stride-expanded dy with the filters
// rotated by 180 degrees, summed over filters, written as the equivalent gather: input cell
// (ih, iw) receives w[kh][kw] * dy[oh][ow] wherever oh*S - P + kh*D == ih.
void conv2d_backward_data(const Conv2dShape& s, std::span<const float> dy, std::span<const float> w,
                          std::span<float> dx, Activation input_activation,
                          std::span<const float> x) {
  detail::check_conv2d_backward_data(s, dy, w, dx, input_activation, x);
  const std::int64_t OH = s.out_height(), OW = s.out_width();
  const std::int64_t Cg = s.in_channels / s.groups, Fg = s.out_channels / s.groups;
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t c = 0; c < s.in_channels; ++c) {
      const std::int64_t g = c / Cg, cg = c % Cg;
      for (std::int64_t ih = 0; ih < s.in_height; ++ih) {
        for (std::int64_t iw = 0; iw < s.in_width; ++iw) {
          double acc = 0.0;
          for (std::int64_t f = g * Fg; f < (g + 1) * Fg; ++f) {
            for (std::int64_t kh = 0; kh < s.kernel_height; ++kh) {
              const std::int64_t th = ih + s.pad_height - kh * s.dilation_height;
              if (th < 0 || th % s.stride_height != 0) continue;
              const std::int64_t oh = th / s.stride_height;
              if (oh >= OH) continue;
              for (std::int64_t kw = 0; kw < s.kernel_width; ++kw) {
                const std::int64_t tw = iw + s.pad_width - kw * s.dilation_width;
                if (tw < 0 || tw % s.stride_width != 0) continue;
                const std::int64_t ow = tw / s.stride_width;
                if (ow >= OW) continue;
                acc += double(dy[((n * s.out_channels + f) * OH + oh) * OW + ow]) *
                       double(w[((f * Cg + cg) * s.kernel_height + kh) * s.kernel_width + kw]);
              }
            }
          }
          dx[((n * s.in_channels + c) * s.in_height + ih) * s.in_width + iw] =
              static_cast<float>(acc);
        }
      }
    }
  }
  if (input_activation != Activation::identity) {
    detail::activation_backward_unchecked(input_activation, x.data(), dx.data(),
                                          static_cast<std::int64_t>(dx.size()));
  }
}

// dw[f][c][kh][kw] = sum over n, oh, ow of x[n][c][oh*S-P+kh*D][ow*S-P+kw*D] * dy[n][f][oh][ow]
// (the padded input correlated with the stride-expanded dy); db[f] = sum of dy[.][f].
void conv2d_backward_weights(const Conv2dShape& s, std::span<const float> x,
                             std::span<const float> dy, std::span<float> dw, std::span<float> db) {
  detail::check_conv2d_backward_weights(s, x, dy, dw, db);
  const std::int64_t OH = s.out_height(), OW = s.out_width();
  const std::int64_t Cg = s.in_channels / s.groups, Fg = s.out_channels / s.groups;
  for (std::int64_t f = 0; f < s.out_channels; ++f) {
    const std::int64_t c0 = (f / Fg) * Cg;
    for (std::int64_t c = 0; c < Cg; ++c) {
      for (std::int64_t kh = 0; kh < s.kernel_height; ++kh) {
        for (std::int64_t kw = 0; kw < s.kernel_width; ++kw) {
          double acc = 0.0;
          for (std::int64_t n = 0; n < s.batch; ++n) {
            for (std::int64_t oh = 0; oh < OH; ++oh) {
              const std::int64_t ih = oh * s.stride_height - s.pad_height + kh * s.dilation_height;
              const bool row_in = ih >= 0 && ih < s.in_height;
              for (std::int64_t ow = 0; ow < OW; ++ow) {
                const std::int64_t iw = ow * s.stride_width - s.pad_width + kw * s.dilation_width;
                const double d = dy[((n * s.out_channels + f) * OH + oh) * OW + ow];
                if (!row_in || iw < 0 || iw >= s.in_width) {
                  acc += 0.0 * d;  // zero padding
                  continue;
                }
                acc +=
                    double(x[((n * s.in_channels + c0 + c) * s.in_height + ih) * s.in_width + iw]) *
                    d;
              }
            }
          }
          dw[((f * Cg + c) * s.kernel_height + kh) * s.kernel_width + kw] = static_cast<float>(acc);
        }
      }
    }
  }
  if (!db.empty()) {
    for (std::int64_t f = 0; f < s.out_channels; ++f) {
      double acc = 0.0;
      for (std::int64_t n = 0; n < s.batch; ++n) {
        for (std::int64_t p = 0; p < OH * OW; ++p)
          acc += dy[(n * s.out_channels + f) * OH * OW + p];
      }
      db[f] = static_cast<float>(acc);
    }
  }
}

}  // namespace im2gemm::reference
