// Internal helpers shared by the layer implementations.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <span>

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

inline void fill_normal(Rng& rng, std::span<float> v, double stddev) {
  for (auto& x : v) x = static_cast<float>(rng.normal() * stddev);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace im2gemm::detail
