// Internal: argument validation shared by the fast paths and the reference loops.
// Every public function calls one check_* function before it touches any output, so a throw
// always leaves the outputs as they were.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include "im2gemm/avgpool2d.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/conv2d.hpp"
#include "im2gemm/maxpool2d.hpp"

namespace im2gemm::detail {

[[noreturn]] void fail(const std::string& message);

/// Throws std::invalid_argument: `what` overflows 64 bits (a op b).
[[noreturn]] void fail_overflow(const char* what, std::int64_t a, char op, std::int64_t b);

/// a * b, throwing std::invalid_argument naming `what` if the product overflows int64_t.
/// Inline with the message built out of line: validation runs on every call, and for small
/// layers it was a visible part of the call (tens of ns of out-of-line calls).
inline std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) [[unlikely]]
    fail_overflow(what, a, '*', b);
  return r;
}
inline std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) [[unlikely]]
    fail_overflow(what, a, '+', b);
  return r;
}

void check_activation(Activation act, const char* what);
/// The span must hold exactly `want` elements.
void check_size(const char* func, const char* name, std::size_t got, std::int64_t want);
/// The span must be empty or hold exactly `want` elements.
void check_optional_size(const char* func, const char* name, std::size_t got, std::int64_t want);

/// Throws if the byte ranges [out, out+out_bytes) and [in, in+in_bytes) overlap.
void check_no_overlap(const char* func, const char* out_name, const void* out,
                      std::size_t out_bytes, const char* in_name, const void* in,
                      std::size_t in_bytes);
template <class T, class U>
void check_no_overlap(const char* func, const char* out_name, std::span<T> out, const char* in_name,
                      std::span<U> in) {
  check_no_overlap(func, out_name, out.data(), out.size_bytes(), in_name, in.data(),
                   in.size_bytes());
}

void check_conv2d_forward(const Conv2dShape& s, std::span<const float> x, std::span<const float> w,
                          std::span<const float> bias, std::span<float> y, Activation act);
void check_conv2d_backward_data(const Conv2dShape& s, std::span<const float> dy,
                                std::span<const float> w, std::span<float> dx,
                                Activation input_activation, std::span<const float> x);
void check_conv2d_backward_weights(const Conv2dShape& s, std::span<const float> x,
                                   std::span<const float> dy, std::span<float> dw,
                                   std::span<float> db);
void check_maxpool2d_forward(const MaxPool2dShape& s, std::span<const float> x, std::span<float> y,
                             std::span<std::int32_t> argmax);
/// Also checks that every argmax entry lies in [0, H*W).
void check_maxpool2d_backward(const MaxPool2dShape& s, std::span<const float> dy,
                              std::span<const std::int32_t> argmax, std::span<float> dx);

/// Output length of a pooling window along one axis, PyTorch's rule (dilation 1): floor or
/// ceil of (in + 2*pad - kernel) / stride, plus one; in ceil mode minus one more if the last
/// window would start at or past in + pad. Below 1: no window fits. Unchecked arithmetic: for
/// operands a validate() has accepted (or checked by pool_out_length_checked).
std::int64_t pool_out_length(std::int64_t in, std::int64_t pad, std::int64_t kernel,
                             std::int64_t stride, bool ceil_mode);
/// The same, throwing std::invalid_argument naming `shape` and `dim` if an intermediate
/// overflows 64 bits or no window fits (operands already checked positive, pad >= 0).
std::int64_t pool_out_length_checked(const char* shape, const char* dim, std::int64_t in,
                                     std::int64_t pad, std::int64_t kernel, std::int64_t stride,
                                     bool ceil_mode);

void check_avgpool2d_forward(const AvgPool2dShape& s, std::span<const float> x, std::span<float> y);
void check_avgpool2d_backward(const AvgPool2dShape& s, std::span<const float> dy,
                              std::span<float> dx);

}  // namespace im2gemm::detail
