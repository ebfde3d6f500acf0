// MaxPool2dLayer (keeps the argmax of its forward for backward) and AvgPool2dLayer.
#include <string>

#include "common/checks.hpp"
#include "im2gemm/layers.hpp"
#include "layers/layers_impl.hpp"
#include "pool/maxpool2d_impl.hpp"

namespace im2gemm {

MaxPool2dLayer::MaxPool2dLayer(const MaxPool2dShape& geometry) : shape_(geometry) {
  shape_.batch = 1;
  shape_.validate();
}

namespace {
template <class Shape>
Shape square(const char* who, Shape3 in, std::int64_t kernel, std::int64_t stride, std::int64_t pad,
             bool ceil_mode) {
  if (stride < 0)
    detail::fail(std::string(who) + ": stride must be >= 0 (0 = kernel), got " +
                 std::to_string(stride));
  Shape s;
  s.batch = 1;
  s.channels = in.channels;
  s.in_height = in.height;
  s.in_width = in.width;
  s.kernel_height = s.kernel_width = kernel;
  s.stride_height = s.stride_width = stride == 0 ? kernel : stride;
  s.pad_height = s.pad_width = pad;
  s.ceil_mode = ceil_mode;
  return s;
}

// "2x2", then " sAxB" and " pAxB" where they differ from the defaults, then " ceil".
template <class Shape>
std::string window_name(const Shape& s) {
  std::string n = std::to_string(s.kernel_height) + "x" + std::to_string(s.kernel_width);
  if (s.stride_height != s.kernel_height || s.stride_width != s.kernel_width)
    n += " s" + std::to_string(s.stride_height) + "x" + std::to_string(s.stride_width);
  if (s.pad_height != 0 || s.pad_width != 0)
    n += " p" + std::to_string(s.pad_height) + "x" + std::to_string(s.pad_width);
  if (s.ceil_mode) n += " ceil";
  return n;
}
}  // namespace

MaxPool2dLayer::MaxPool2dLayer(Shape3 input, std::int64_t kernel, std::int64_t stride,
                               std::int64_t pad, bool ceil_mode)
    : MaxPool2dLayer(
          square<MaxPool2dShape>("MaxPool2dLayer", input, kernel, stride, pad, ceil_mode)) {}

std::string MaxPool2dLayer::name() const { return "maxpool " + window_name(shape_); }

Shape3 MaxPool2dLayer::input_shape() const {
  return Shape3{shape_.channels, shape_.in_height, shape_.in_width};
}
Shape3 MaxPool2dLayer::output_shape() const {
  return Shape3{shape_.channels, shape_.out_height(), shape_.out_width()};
}

std::span<const float> MaxPool2dLayer::forward(std::span<const float> x, std::int64_t batch) {
  check_forward("MaxPool2dLayer", x, batch);
  MaxPool2dShape s = shape_;
  s.batch = batch;
  s.validate();
  y_.resize(static_cast<std::size_t>(s.y_size()));
  argmax_.resize(y_.size());
  maxpool2d_forward(s, x, y_, argmax_);
  batch_ = batch;
  return y_;
}

std::span<const float> MaxPool2dLayer::backward(std::span<const float> dy, bool want_input_grad) {
  check_backward("MaxPool2dLayer", dy);
  if (!want_input_grad) return {};
  MaxPool2dShape s = shape_;
  s.batch = batch_;
  dx_.resize(static_cast<std::size_t>(s.x_size()));
  maxpool2d_backward(s, dy, argmax_, dx_);
  return dx_;
}

std::span<const float> MaxPool2dLayer::backward_through_activation(std::span<const float> dy,
                                                                   Activation act) {
  check_backward("MaxPool2dLayer", dy);
  detail::check_activation(act, "MaxPool2dLayer::backward_through_activation: act");
  MaxPool2dShape s = shape_;
  s.batch = batch_;
  dx_.resize(static_cast<std::size_t>(s.x_size()));
  // argmax_ is what this layer's forward wrote: the fused pass does not scan it again.
  detail::maxpool2d_backward_through_activation(s, dy, y_, act, argmax_, dx_);
  return dx_;
}

// ------------------------------------------------------------------------ AvgPool2dLayer

AvgPool2dLayer::AvgPool2dLayer(const AvgPool2dShape& geometry) : shape_(geometry) {
  shape_.batch = 1;
  shape_.validate();
}

AvgPool2dLayer::AvgPool2dLayer(Shape3 input, std::int64_t kernel, std::int64_t stride,
                               std::int64_t pad, bool ceil_mode, bool count_include_pad)
    : AvgPool2dLayer([&] {
        auto s = square<AvgPool2dShape>("AvgPool2dLayer", input, kernel, stride, pad, ceil_mode);
        s.count_include_pad = count_include_pad;
        return s;
      }()) {}

std::string AvgPool2dLayer::name() const {
  std::string n = "avgpool " + window_name(shape_);
  if (!shape_.count_include_pad) n += " excl-pad";
  return n;
}

Shape3 AvgPool2dLayer::input_shape() const {
  return Shape3{shape_.channels, shape_.in_height, shape_.in_width};
}
Shape3 AvgPool2dLayer::output_shape() const {
  return Shape3{shape_.channels, shape_.out_height(), shape_.out_width()};
}

std::span<const float> AvgPool2dLayer::forward(std::span<const float> x, std::int64_t batch) {
  check_forward("AvgPool2dLayer", x, batch);
  AvgPool2dShape s = shape_;
  s.batch = batch;
  s.validate();
  y_.resize(static_cast<std::size_t>(s.y_size()));
  avgpool2d_forward(s, x, y_);
  batch_ = batch;
  return y_;
}

std::span<const float> AvgPool2dLayer::backward(std::span<const float> dy, bool want_input_grad) {
  check_backward("AvgPool2dLayer", dy);
  if (!want_input_grad) return {};
  AvgPool2dShape s = shape_;
  s.batch = batch_;
  dx_.resize(static_cast<std::size_t>(s.x_size()));
  avgpool2d_backward(s, dy, dx_);
  return dx_;
}

}  // namespace im2gemm
