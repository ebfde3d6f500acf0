// The im2gemm::im2gemm_idx target: read_mnist on a folder without the files must throw
// std::invalid_argument naming the missing file.
#include <cstdio>
#include <stdexcept>
#include <string>

#include <im2gemm/idx.hpp>

int main() {
  try {
    im2gemm::read_mnist("/nonexistent", "t10k");
  } catch (const std::invalid_argument& e) {
    const bool ok = std::string(e.what()).find("t10k-images-idx3-ubyte.gz") != std::string::npos;
    std::printf("idx_example: %s\n", ok ? "ok (missing files reported)" : e.what());
    return ok ? 0 : 1;
  }
  std::printf("idx_example: no exception for a missing folder\n");
  return 1;
}
