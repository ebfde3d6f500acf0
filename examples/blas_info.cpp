// Prints what BLAS im2gemm runs on.
//   blas_info             one line: library, kernel, threading, and a warning on a fallback
//   blas_info --coretype  prints the OPENBLAS_CORETYPE to use if OpenBLAS fell back to its
//                         generic kernel on this CPU, nothing otherwise (for scripts)
#include <cstdio>
#include <cstring>

#include <im2gemm/im2gemm.hpp>

int main(int argc, char** argv) {
  const auto info = im2gemm::blas_info();
  if (argc > 1 && std::strcmp(argv[1], "--coretype") == 0) {
    if (info.fallback) std::printf("%s\n", info.cpu_best.c_str());
    return 0;
  }
  std::printf("%s\n", info.summary().c_str());
  return 0;
}
