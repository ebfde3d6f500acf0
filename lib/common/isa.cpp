#include "common/isa.hpp"

#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>

#include "common/checks.hpp"
#include "im2gemm/common.hpp"

namespace im2gemm::detail {

namespace {

Isa probe() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("bmi2")) {
    return Isa::avx512;
  }
  if (avx2) return Isa::avx2;
#endif
  return Isa::scalar;
}

// One environment variable, parsed once: its value index, or the error message to throw.
struct EnvChoice {
  int value = 0;
  std::string error;
};

EnvChoice parse_env(const char* var, const char* const* names, int count, int unset) {
  EnvChoice c;
  const char* env = std::getenv(var);
  if (env == nullptr) {
    c.value = unset;
    return c;
  }
  const std::string_view v(env);
  std::string allowed;
  for (int i = 0; i < count; ++i) {
    if (v == names[i]) {
      c.value = i;
      return c;
    }
    allowed += (i ? ", " : "") + std::string(names[i]);
  }
  c.error = std::string(var) + "='" + std::string(v) + "' is not one of: " + allowed;
  return c;
}

const char* const kIsaNames[] = {"scalar", "avx2", "avx512"};
const char* const kBackendNames[] = {"auto", "packed", "openblas"};

const EnvChoice& isa_env() {
  static const EnvChoice c = parse_env("IM2GEMM_ISA", kIsaNames, 3, 2);
  return c;
}

const EnvChoice& backend_env() {
  static const EnvChoice c = parse_env("IM2GEMM_GEMM", kBackendNames, 3, 0);
  return c;
}

}  // namespace

const char* isa_name(Isa isa) { return kIsaNames[static_cast<int>(isa)]; }

const char* gemm_backend_name(GemmBackend b) { return kBackendNames[static_cast<int>(b)]; }

Isa isa_supported() {
  static const Isa isa = probe();
  return isa;
}

Isa isa_env_cap() {
  const EnvChoice& c = isa_env();
  if (!c.error.empty()) fail(c.error);
  return static_cast<Isa>(c.value);
}

Isa isa_clamp(Isa requested) {
  return static_cast<int>(requested) < static_cast<int>(isa_supported()) ? requested
                                                                         : isa_supported();
}

Isa isa_active() { return isa_clamp(isa_env_cap()); }

GemmBackend gemm_backend_env() {
  const EnvChoice& c = backend_env();
  if (!c.error.empty()) fail(c.error);
  return static_cast<GemmBackend>(c.value);
}

}  // namespace im2gemm::detail

namespace im2gemm {

EngineInfo engine_info() {
  EngineInfo e;
  e.isa = detail::isa_name(detail::isa_active());
  e.conv_gemm = detail::gemm_backend_name(detail::gemm_backend_env());
  return e;
}

std::string EngineInfo::summary() const {
  return "isa: " + isa + " | conv gemm: " + conv_gemm +
         (conv_gemm == "auto" ? " (plan chooses packed or openblas per shape and pass)" : "");
}

}  // namespace im2gemm
