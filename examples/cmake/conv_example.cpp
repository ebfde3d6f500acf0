// One convolution through the im2gemm::im2gemm CMake target: 3x3, pad 1, bias, on a 1x1x4x4
// input of ones, checked against what the sum of the window cells gives.
#include <cstdio>
#include <vector>

#include <im2gemm/im2gemm.hpp>

int main() {
  const im2gemm::Conv2dShape s{.in_height = 4,
                               .in_width = 4,
                               .kernel_height = 3,
                               .kernel_width = 3,
                               .pad_height = 1,
                               .pad_width = 1};
  std::vector<float> x(s.x_size(), 1.0f), w(s.w_size(), 1.0f), bias{0.5f}, y(s.y_size());
  im2gemm::conv2d_forward(s, x, w, bias, y);
  // A corner sees 4 input cells, an edge cell 6, an inner cell 9; plus the bias.
  const bool ok = y[0] == 4.5f && y[1] == 6.5f && y[5] == 9.5f;
  std::printf("conv_example: y[0] = %.1f, y[1] = %.1f, y[5] = %.1f: %s\n", y[0], y[1], y[5],
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
