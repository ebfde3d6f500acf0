// im2gemm: 2-D average pooling, fp32, NCHW, forward and backward, with PyTorch's avg_pool2d
// semantics (count_include_pad, ceil_mode).
#pragma once

#include <cstdint>
#include <span>

namespace im2gemm {

/// Shape of a 2-D average pooling. Plain aggregate.
///
/// Window (oh, ow) starts at row oh*stride_height - pad_height and column
/// ow*stride_width - pad_width of the input and spans kernel_height x kernel_width cells; the
/// cells outside the input count as zeros. Its divisor (PyTorch's rule):
///  - count_include_pad: the window's cells inside the padded input, i.e. the window clipped
///    to rows [-pad_height, in_height + pad_height) and the same for columns. Only a window
///    that ceil mode lets run past the bottom or right padding has fewer than
///    kernel_height*kernel_width.
///  - otherwise: the window's cells inside the input itself.
struct AvgPool2dShape {
  std::int64_t batch = 1, channels = 1, in_height = 1, in_width = 1;
  std::int64_t kernel_height = 2, kernel_width = 2, stride_height = 2, stride_width = 2;
  std::int64_t pad_height = 0, pad_width = 0;  ///< pad <= kernel / 2, as in PyTorch
  /// PyTorch's ceil mode: out = ceil((in + 2*pad - kernel) / stride) + 1, minus one if that
  /// last window would start at or past in + pad (it must start inside the input or its
  /// top/left padding). False: floor, the convolution formula.
  bool ceil_mode = false;
  bool count_include_pad = true;  ///< the divisor counts padded cells (PyTorch's default)

  /// Meaningful only for a shape that validate() accepts.
  std::int64_t out_height() const;
  std::int64_t out_width() const;

  /// Throws std::invalid_argument naming the field and its value: counts, kernel and stride
  /// >= 1; 0 <= pad <= kernel / 2; at least one output row and column; every tensor's element
  /// count fits in 64 bits.
  void validate() const;

  std::int64_t x_size() const;  ///< N*C*H*W   (valid shapes only)
  std::int64_t y_size() const;  ///< N*C*OH*OW
};

/// y [N][C][OH][OW] is OVERWRITTEN with the window means: the sum of the window's input cells
/// in row-major order, divided by the divisor above (PyTorch's order and rounding).
void avgpool2d_forward(const AvgPool2dShape& shape, std::span<const float> x, std::span<float> y);

/// dx [N][C][H][W] is OVERWRITTEN: zero, then each dy / divisor added to every input cell of
/// its window (overlapping windows add up, in output order; padded cells receive nothing).
void avgpool2d_backward(const AvgPool2dShape& shape, std::span<const float> dy,
                        std::span<float> dx);

/// Both throw std::invalid_argument on bad input (bad shape, a span of the wrong size, an
/// output overlapping the input) and std::bad_alloc when a thread cannot get its scratch, in
/// both cases before any output is written.

}  // namespace im2gemm
