// Internal: the one CPU probe and the one ISA cap of the library (convolution GEMM engine,
// im2col packers, pooling), and the convolution GEMM backend choice. Both come from the
// environment, read once:
//   IM2GEMM_ISA  = scalar | avx2 | avx512   caps every kernel (unset: the best the CPU has)
//   IM2GEMM_GEMM = auto | packed | openblas the convolution GEMM backend (unset: auto)
// An unknown value makes every call that depends on it throw std::invalid_argument naming the
// variable and the allowed values (never silently ignored).
#pragma once

namespace im2gemm::detail {

/// Instruction sets of the kernels, in increasing order. avx2 means AVX2 + FMA; avx512 means
/// AVX-512 F, BW, VL, DQ (+ AVX2, FMA, BMI2).
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
/// The best ISA this CPU and OS support (cached).
Isa isa_supported();
/// The cap from IM2GEMM_ISA (avx512 when unset). Throws std::invalid_argument on a bad value.
Isa isa_env_cap();
/// The ISA the kernels run by default: min(isa_env_cap(), isa_supported()).
Isa isa_active();
/// min(requested, isa_supported()): what a kernel asked to run `requested` really runs.
Isa isa_clamp(Isa requested);

/// The convolution GEMM backend: `automatic` lets the plan choose per shape and pass.
enum class GemmBackend : int { automatic = 0, packed = 1, openblas = 2 };
const char* gemm_backend_name(GemmBackend b);  ///< "auto", "packed", "openblas"
/// From IM2GEMM_GEMM (automatic when unset). Throws std::invalid_argument on a bad value.
GemmBackend gemm_backend_env();

}  // namespace im2gemm::detail
