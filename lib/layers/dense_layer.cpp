// DenseLayer: y = act(x W^T + b) as one cblas_sgemm per pass.
#include <cblas.h>

#include <algorithm>
#include <string>

#include "common/checks.hpp"
#include "im2gemm/layers.hpp"
#include "layers/layers_impl.hpp"

namespace im2gemm {

DenseLayer::DenseLayer(Shape3 input, std::int64_t outputs, Activation act)
    : in_(input), out_(outputs), act_(act) {
  if (input.channels < 1 || input.height < 1 || input.width < 1) {
    detail::fail("DenseLayer: input shape must be positive, got " + input.str());
  }
  if (outputs < 1) detail::fail("DenseLayer: outputs must be >= 1, got " + std::to_string(outputs));
  detail::check_activation(act, "DenseLayer: act");
  const std::int64_t n_in = detail::checked_mul(detail::checked_mul(input.channels, input.height,
                                                                    "DenseLayer input size"),
                                                input.width, "DenseLayer input size");
  const std::int64_t n_w = detail::checked_mul(n_in, outputs, "DenseLayer weight count");
  if (n_in > (std::int64_t{1} << 31) - 1 || outputs > (std::int64_t{1} << 31) - 1) {
    detail::fail("DenseLayer: sizes must fit BLAS int: inputs " + std::to_string(n_in) +
                 ", outputs " + std::to_string(outputs));
  }
  w_.assign(static_cast<std::size_t>(n_w), 0.0f);
  dw_.assign(w_.size(), 0.0f);
  b_.assign(static_cast<std::size_t>(outputs), 0.0f);
  db_.assign(b_.size(), 0.0f);
}

std::string DenseLayer::name() const {
  std::string n = "dense " + std::to_string(in_.size()) + "->" + std::to_string(out_);
  if (act_ != Activation::identity) n += std::string(" ") + detail::activation_name(act_);
  return n;
}

std::span<const float> DenseLayer::forward(std::span<const float> x, std::int64_t batch) {
  check_forward("DenseLayer", x, batch);
  if (batch > (std::int64_t{1} << 31) - 1)
    detail::fail("DenseLayer: batch too large for BLAS: " + std::to_string(batch));
  const int n = static_cast<int>(batch), k = static_cast<int>(in_.size()),
            m = static_cast<int>(out_);
  x_.assign(x.begin(), x.end());
  y_.resize(static_cast<std::size_t>(batch * out_));
  for (std::int64_t i = 0; i < batch; ++i) std::copy(b_.begin(), b_.end(), y_.begin() + i * out_);
  // Y[n][out] = X[n][in] * W[out][in]^T + Y (= bias)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x_.data(), k, w_.data(), k,
              1.0f, y_.data(), m);
  activation_forward(act_, y_);
  batch_ = batch;
  return y_;
}

std::span<const float> DenseLayer::backward(std::span<const float> dy, bool want_input_grad) {
  check_backward("DenseLayer", dy);
  const int n = static_cast<int>(batch_), k = static_cast<int>(in_.size()),
            m = static_cast<int>(out_);
  const float* delta = dy.data();  // dE/d(pre-activation)
  if (act_ != Activation::identity) {
    delta_.resize(dy.size());
    detail::derivative_times(act_, y_.data(), dy.data(), delta_.data(),
                             static_cast<std::int64_t>(dy.size()));
    delta = delta_.data();
  }
  // dW[out][in] = delta^T[out][n] * X[n][in]   (overwritten: beta = 0)
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, k, n, 1.0f, delta, m, x_.data(), k, 0.0f,
              dw_.data(), k);
  std::fill(db_.begin(), db_.end(), 0.0f);
  for (int i = 0; i < n; ++i) {
    const float* row = delta + static_cast<std::int64_t>(i) * m;
    for (int j = 0; j < m; ++j) db_[j] += row[j];
  }
  if (!want_input_grad) return {};
  dx_.resize(x_.size());
  // dX[n][in] = delta[n][out] * W[out][in]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, k, m, 1.0f, delta, m, w_.data(), k,
              0.0f, dx_.data(), k);
  return dx_;
}

std::vector<Parameter> DenseLayer::parameters() {
  return {Parameter{"weights", {out_, in_.size()}, w_, dw_, true},
          Parameter{"bias", {out_}, b_, db_, false}};
}

void DenseLayer::place_parameters(std::span<float> values, std::span<float> grads) {
  detail::place_weights_bias("DenseLayer '" + name() + "'", values, grads, w_, b_, dw_, db_);
}

void DenseLayer::do_init(Rng& rng, Init scheme) {
  detail::init_parameters(rng, scheme, act_, in_.size(), out_, w_, b_);
}

}  // namespace im2gemm
