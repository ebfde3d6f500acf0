// Conv2dLayer: owns filters and biases; forward fuses the activation into conv2d_forward,
// backward first turns dE/d(activated output) into dE/d(pre-activation).
#include <string>

#include "common/checks.hpp"
#include "im2gemm/layers.hpp"
#include "layers/layers_impl.hpp"

namespace im2gemm {

namespace {
Conv2dShape square(Shape3 in, std::int64_t filters, std::int64_t kernel, std::int64_t stride,
                   std::int64_t pad) {
  Conv2dShape s;
  s.batch = 1;
  s.in_channels = in.channels;
  s.in_height = in.height;
  s.in_width = in.width;
  s.out_channels = filters;
  s.kernel_height = s.kernel_width = kernel;
  s.stride_height = s.stride_width = stride;
  s.pad_height = s.pad_width = pad;
  return s;
}
}  // namespace

Conv2dLayer::Conv2dLayer(const Conv2dShape& geometry, Activation act)
    : shape_(geometry), act_(act) {
  shape_.batch = 1;
  shape_.validate();
  detail::check_activation(act, "Conv2dLayer: act");
  w_.assign(static_cast<std::size_t>(shape_.w_size()), 0.0f);
  dw_.assign(w_.size(), 0.0f);
  b_.assign(static_cast<std::size_t>(shape_.out_channels), 0.0f);
  db_.assign(b_.size(), 0.0f);
}

Conv2dLayer::Conv2dLayer(Shape3 input, std::int64_t filters, std::int64_t kernel, Activation act,
                         std::int64_t stride, std::int64_t pad)
    : Conv2dLayer(square(input, filters, kernel, stride, pad), act) {}

std::string Conv2dLayer::name() const {
  std::string n = "conv " + std::to_string(shape_.kernel_height) + "x" +
                  std::to_string(shape_.kernel_width) + " " + std::to_string(shape_.out_channels);
  if (shape_.stride_height != 1 || shape_.stride_width != 1)
    n += " s" + std::to_string(shape_.stride_height) + "x" + std::to_string(shape_.stride_width);
  if (shape_.pad_height != 0 || shape_.pad_width != 0)
    n += " p" + std::to_string(shape_.pad_height) + "x" + std::to_string(shape_.pad_width);
  if (shape_.groups != 1) n += " g" + std::to_string(shape_.groups);
  if (act_ != Activation::identity) n += std::string(" ") + detail::activation_name(act_);
  return n;
}

Shape3 Conv2dLayer::input_shape() const {
  return Shape3{shape_.in_channels, shape_.in_height, shape_.in_width};
}
Shape3 Conv2dLayer::output_shape() const {
  return Shape3{shape_.out_channels, shape_.out_height(), shape_.out_width()};
}

std::span<const float> Conv2dLayer::forward(std::span<const float> x, std::int64_t batch) {
  check_forward("Conv2dLayer", x, batch);
  Conv2dShape s = shape_;
  s.batch = batch;
  s.validate();  // sizes with this batch still fit
  x_.assign(x.begin(), x.end());
  y_.resize(static_cast<std::size_t>(s.y_size()));
  conv2d_forward(s, x_, w_, b_, y_, act_);
  batch_ = batch;
  return y_;
}

std::span<const float> Conv2dLayer::backward(std::span<const float> dy, bool want_input_grad) {
  check_backward("Conv2dLayer", dy);
  if (act_ == Activation::identity) return backward_preactivation(dy, want_input_grad);
  delta_.resize(dy.size());
  detail::derivative_times(act_, y_.data(), dy.data(), delta_.data(),
                           static_cast<std::int64_t>(dy.size()));
  return backward_preactivation(delta_, want_input_grad);
}

std::span<const float> Conv2dLayer::backward_preactivation(std::span<const float> delta,
                                                           bool want_input_grad) {
  check_backward("Conv2dLayer", delta);
  Conv2dShape s = shape_;
  s.batch = batch_;
  conv2d_backward_weights(s, x_, delta, dw_, db_);
  if (!want_input_grad) return {};
  dx_.resize(x_.size());
  conv2d_backward_data(s, delta, w_, dx_);
  return dx_;
}

std::vector<Parameter> Conv2dLayer::parameters() {
  const auto& s = shape_;
  return {Parameter{"weights",
                    {s.out_channels, s.in_channels / s.groups, s.kernel_height, s.kernel_width},
                    w_,
                    dw_,
                    true},
          Parameter{"bias", {s.out_channels}, b_, db_, false}};
}

void Conv2dLayer::place_parameters(std::span<float> values, std::span<float> grads) {
  detail::place_weights_bias("Conv2dLayer '" + name() + "'", values, grads, w_, b_, dw_, db_);
}

void Conv2dLayer::do_init(Rng& rng, Init scheme) {
  const auto& s = shape_;
  const std::int64_t k = s.kernel_height * s.kernel_width;
  detail::init_parameters(rng, scheme, act_, s.in_channels / s.groups * k,
                          s.out_channels / s.groups * k, w_, b_);
}

}  // namespace im2gemm
