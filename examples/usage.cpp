// The README's usage example: one convolution forward with ReLU, then max pooling.
// Build it outside this tree:  g++ -std=c++20 usage.cpp $(pkg-config --static --cflags --libs im2gemm)
#include <cstdio>
#include <vector>

#include <im2gemm/im2gemm.hpp>

int main() {
  im2gemm::Conv2dShape conv{.batch = 2,
                            .in_channels = 3,
                            .in_height = 32,
                            .in_width = 32,
                            .out_channels = 8,
                            .kernel_height = 3,
                            .kernel_width = 3,
                            .pad_height = 1,
                            .pad_width = 1};
  conv.validate();  // throws std::invalid_argument naming the bad field
  std::vector<float> x(conv.x_size(), 0.5f), w(conv.w_size(), 0.1f), bias(8, -0.2f);
  std::vector<float> y(conv.y_size());
  im2gemm::conv2d_forward(conv, x, w, bias, y, im2gemm::Activation::relu);

  im2gemm::MaxPool2dShape pool{.batch = 2, .channels = 8, .in_height = 32, .in_width = 32};
  std::vector<float> p(pool.y_size());
  std::vector<std::int32_t> argmax(pool.y_size());
  im2gemm::maxpool2d_forward(pool, y, p, argmax);

  std::printf("y[0] = %.3f (centre %.3f), pooled %lld values, %s\n", y[0], y[conv.out_width() + 1],
              static_cast<long long>(p.size()), im2gemm::blas_info().summary().c_str());
  return 0;
}
