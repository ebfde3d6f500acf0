// im2gemm: the umbrella header of the public API.
#pragma once

#include "im2gemm/avgpool2d.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/conv2d.hpp"
#include "im2gemm/layers.hpp"
#include "im2gemm/maxpool2d.hpp"
#include "im2gemm/reference.hpp"
