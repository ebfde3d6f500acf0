// im2gemm: activations, threading and the BLAS self-report.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace im2gemm {

/// Largest stride, pad and dilation validate() accepts (2^31 - 1), for convolution and pooling
/// alike. No layer comes near it, and with it every index the passes compute, such as
/// (output column) * stride + (kernel column) * dilation - pad, stays far inside 64 bits.
inline constexpr std::int64_t kMaxStridePadDilation = (std::int64_t{1} << 31) - 1;

/// Element-wise activation fused into the layers.
enum class Activation { identity, relu, sigmoid, tanh };

/// Applies the activation in place: values[i] = f(values[i]).
/// Throws std::invalid_argument for an Activation outside the enum (values untouched).
void activation_forward(Activation act, std::span<float> values);

/// d[i] *= f'(u_i), where f' is computed from y[i] = f(u_i) (the seed's activator.backward):
/// identity 1, relu (y > 0 ? 1 : 0), sigmoid y(1-y), tanh 1-y^2.
/// Throws std::invalid_argument if the spans differ in length or act is outside the enum
/// (d untouched).
void activation_backward(Activation act, std::span<const float> y, std::span<float> d);

/// The number of threads every primitive uses from now on (process-wide).
/// 0 = OpenMP's default (OMP_NUM_THREADS, or all cores). Throws std::invalid_argument below 0.
void set_num_threads(int n);

/// The number of threads the primitives use now (>= 1).
int num_threads();

/// What BLAS the library is linked to and what it runs, from OpenBLAS's own query functions,
/// e.g. "OpenBLAS 0.3.21 (OpenMP) config: ... core: SkylakeX threads: 2".
/// A core named Prescott on a CPU with AVX2 or AVX-512 means OpenBLAS did not recognise the
/// CPU and runs its slow generic kernel: set OPENBLAS_CORETYPE (see the README).
struct BlasInfo {
  std::string library;   ///< "OpenBLAS 0.3.21 ..." as openblas_get_config() reports it
  std::string core;      ///< the kernel OpenBLAS runs: openblas_get_corename()
  std::string parallel;  ///< "OpenMP", "pthreads" or "sequential"
  int threads = 1;       ///< openblas_get_num_threads()
  std::string
      cpu_best;  ///< the best kernel family the CPU's flags allow: "SkylakeX", "Haswell", ...
  bool fallback = false;  ///< true if core is the generic kernel although the CPU can do better
  std::string summary() const;  ///< one line with all of the above
};
BlasInfo blas_info();

/// What the library's own kernels run. Read from the environment once:
/// IM2GEMM_ISA = scalar | avx2 | avx512 caps every kernel (convolution GEMM engine, im2col
/// packers, pooling; unset: the best the CPU has), IM2GEMM_GEMM = auto | packed | openblas
/// chooses the convolution GEMM backend (unset: auto, the plan picks per shape and pass).
/// Throws std::invalid_argument naming the variable and the allowed values if either is set to
/// anything else; so does every primitive that depends on it.
struct EngineInfo {
  std::string isa;              ///< "scalar", "avx2" or "avx512": what the kernels actually run
  std::string conv_gemm;        ///< "auto", "packed" or "openblas"
  std::string summary() const;  ///< one line with both
};
EngineInfo engine_info();

}  // namespace im2gemm
