// Internal helpers shared by the layer implementations.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "common/checks.hpp"
#include "im2gemm/layers.hpp"

namespace im2gemm::detail {

inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::identity: return "identity";
    case Activation::relu: return "relu";
    case Activation::sigmoid: return "sigmoid";
    case Activation::tanh: return "tanh";
  }
  return "invalid";
}

/// He normal for relu (std sqrt(2/fan_in)), Xavier normal otherwise (std sqrt(2/(in+out))).
inline double init_std(Activation act, std::int64_t fan_in, std::int64_t fan_out) {
  if (act == Activation::relu) return std::sqrt(2.0 / static_cast<double>(fan_in));
  return std::sqrt(2.0 / static_cast<double>(fan_in + fan_out));
}

/// delta[i] = dy[i] * f'(u_i), f' computed from y[i] = f(u_i): activation_backward fused with
/// the copy of dy, one pass over three arrays. Sizes are checked by the caller.
inline void derivative_times(Activation act, const float* y, const float* dy, float* delta,
                             std::int64_t n) {
  switch (act) {
    case Activation::identity:
      for (std::int64_t i = 0; i < n; ++i) delta[i] = dy[i];
      return;
    case Activation::relu:
      for (std::int64_t i = 0; i < n; ++i) delta[i] = y[i] > 0.0f ? dy[i] : 0.0f;
      return;
    case Activation::sigmoid:
      for (std::int64_t i = 0; i < n; ++i) delta[i] = dy[i] * (y[i] * (1.0f - y[i]));
      return;
    case Activation::tanh:
      for (std::int64_t i = 0; i < n; ++i) delta[i] = dy[i] * (1.0f - y[i] * y[i]);
      return;
  }
}

inline void fill_normal(Rng& rng, std::span<float> v, double stddev) {
  for (auto& x : v) x = static_cast<float>(rng.normal() * stddev);
}

/// Throws std::invalid_argument naming `who` if scheme is not a value of the Init enum.
inline void check_init_scheme(const char* who, Init scheme) {
  if (scheme != Init::he_xavier && scheme != Init::pytorch) {
    fail(std::string(who) + ": scheme is not a valid Init (value " +
         std::to_string(static_cast<int>(scheme)) + ")");
  }
}

/// Weights, then biases, by the scheme (see Init in layers.hpp).
inline void init_parameters(Rng& rng, Init scheme, Activation act, std::int64_t fan_in,
                            std::int64_t fan_out, std::span<float> w, std::span<float> b) {
  if (scheme == Init::pytorch) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    for (auto& v : w) v = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
    for (auto& v : b) v = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
    return;
  }
  fill_normal(rng, w, init_std(act, fan_in, fan_out));
  for (auto& v : b) v = 0.0f;
}

/// Layer::place_parameters of a layer whose parameters() are weights then bias: w then b in
/// values, dw then db in grads. Throws (nothing moved) unless both spans have w.size() + b.size().
inline void place_weights_bias(const std::string& who, std::span<float> values,
                               std::span<float> grads, ParameterBuffer& w, ParameterBuffer& b,
                               ParameterBuffer& dw, ParameterBuffer& db) {
  const std::size_t n = w.size() + b.size();
  if (values.size() != n || grads.size() != n) {
    fail(who + "::place_parameters: values hold " + std::to_string(values.size()) +
         " floats and grads " + std::to_string(grads.size()) + ", the layer has " +
         std::to_string(n) + " parameters");
  }
  w.place_in(values.first(w.size()));
  b.place_in(values.subspan(w.size()));
  dw.place_in(grads.first(w.size()));
  db.place_in(grads.subspan(w.size()));
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace im2gemm::detail
