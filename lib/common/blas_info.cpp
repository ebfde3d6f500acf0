#include <cblas.h>

#include <cctype>
#include <string>

#include "im2gemm/common.hpp"

namespace im2gemm {

namespace {

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// The best OpenBLAS x86-64 kernel family this CPU's flags allow.
std::string best_core_for_cpu() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  if (__builtin_cpu_supports("avx")) return "Sandybridge";
#endif
  return "";
}

}  // namespace

std::string BlasInfo::summary() const {
  std::string s = library + " | core: " + core + " | parallel: " + parallel +
                  " | threads: " + std::to_string(threads);
  if (fallback) {
    s += " | WARNING: generic kernel on a CPU that can run " + cpu_best +
         ": set OPENBLAS_CORETYPE=" + cpu_best;
  }
  return s;
}

BlasInfo blas_info() {
  BlasInfo info;
  info.library = openblas_get_config();
  info.core = openblas_get_corename();
  switch (openblas_get_parallel()) {
    case 0: info.parallel = "sequential"; break;
    case 1: info.parallel = "pthreads"; break;
    case 2: info.parallel = "OpenMP"; break;
    default: info.parallel = "unknown"; break;
  }
  info.threads = openblas_get_num_threads();
  info.cpu_best = best_core_for_cpu();
  const std::string core = lower(info.core);
  const bool generic = core == "prescott" || core == "core2" || core == "penryn" ||
                       core == "dunnington" || core == "nehalem" || core == "atom" ||
                       core == "katmai" || core == "coppermine" || core == "northwood" ||
                       core == "banias" || core == "generic";
  // An SSE-only kernel (or an AVX-only one on an AVX2 machine) wastes most of the FMA units.
  const bool weak_avx = core == "sandybridge" && info.cpu_best != "Sandybridge";
  info.fallback = !info.cpu_best.empty() && (generic || weak_avx);
  return info;
}

}  // namespace im2gemm
