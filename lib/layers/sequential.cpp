// Sequential: chains layers, checks shapes, times each layer, saves and loads parameters.
#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

#include "common/checks.hpp"
#include "common/crc32.hpp"
#include "im2gemm/layers.hpp"
#include "layers/layers_impl.hpp"

namespace im2gemm {

using Clock = std::chrono::steady_clock;

Sequential::Sequential(Shape3 input) : input_(input) {
  if (input.channels < 1 || input.height < 1 || input.width < 1) {
    detail::fail("Sequential: input shape must be positive, got " + input.str());
  }
}

Shape3 Sequential::output_shape() const {
  return layers_.empty() ? input_ : layers_.back()->output_shape();
}

Layer& Sequential::add(std::unique_ptr<Layer> layer) {
  if (!layer) detail::fail("Sequential::add: null layer");
  const Shape3 have = output_shape(), want = layer->input_shape();
  if (!(have == want)) {
    const std::string prev = layers_.empty() ? std::string("the network input")
                                             : "layer " + std::to_string(layers_.size() - 1) +
                                                   " '" + layers_.back()->name() + "'";
    detail::fail("Sequential::add: layer " + std::to_string(layers_.size()) + " '" + layer->name() +
                 "' takes " + want.str() + " but " + prev + " gives " + have.str());
  }
  LayerTiming t;
  t.name = layer->name();
  const bool fuse = !layers_.empty() && dynamic_cast<MaxPool2dLayer*>(layer.get()) != nullptr &&
                    dynamic_cast<Conv2dLayer*>(layers_.back().get()) != nullptr;
  timings_.reserve(timings_.size() + 1);
  pool_after_conv_.reserve(pool_after_conv_.size() + 1);
  layers_.push_back(std::move(layer));  // the only step that can throw (bad_alloc): first
  timings_.push_back(t);
  pool_after_conv_.push_back(fuse);
  views_current_ = false;  // the new layer's parameters are not in the contiguous views yet
  return *layers_.back();
}

Conv2dLayer& Sequential::add_conv2d(std::int64_t filters, std::int64_t kernel, Activation act,
                                    std::int64_t stride, std::int64_t pad) {
  return static_cast<Conv2dLayer&>(
      add(std::make_unique<Conv2dLayer>(output_shape(), filters, kernel, act, stride, pad)));
}
MaxPool2dLayer& Sequential::add_maxpool2d(std::int64_t kernel, std::int64_t stride,
                                          std::int64_t pad, bool ceil_mode) {
  return static_cast<MaxPool2dLayer&>(
      add(std::make_unique<MaxPool2dLayer>(output_shape(), kernel, stride, pad, ceil_mode)));
}
AvgPool2dLayer& Sequential::add_avgpool2d(std::int64_t kernel, std::int64_t stride,
                                          std::int64_t pad, bool ceil_mode,
                                          bool count_include_pad) {
  return static_cast<AvgPool2dLayer&>(
      add(std::make_unique<AvgPool2dLayer>(output_shape(), kernel, stride, pad, ceil_mode,
                                           count_include_pad)));
}
AvgPool2dLayer& Sequential::add_global_avgpool2d() {
  const Shape3 in = output_shape();
  AvgPool2dShape s;
  s.channels = in.channels;
  s.in_height = s.kernel_height = in.height;
  s.in_width = s.kernel_width = in.width;
  s.stride_height = s.stride_width = 1;
  return static_cast<AvgPool2dLayer&>(add(std::make_unique<AvgPool2dLayer>(s)));
}
DenseLayer& Sequential::add_dense(std::int64_t outputs, Activation act) {
  return static_cast<DenseLayer&>(add(std::make_unique<DenseLayer>(output_shape(), outputs, act)));
}

Layer& Sequential::layer(std::size_t i) {
  if (i >= layers_.size())
    detail::fail("Sequential::layer: index " + std::to_string(i) + " of " +
                 std::to_string(layers_.size()));
  return *layers_[i];
}
const Layer& Sequential::layer(std::size_t i) const {
  if (i >= layers_.size())
    detail::fail("Sequential::layer: index " + std::to_string(i) + " of " +
                 std::to_string(layers_.size()));
  return *layers_[i];
}

void Sequential::init(std::uint64_t seed, Init scheme) {
  detail::check_init_scheme("Sequential::init", scheme);
  Rng rng(seed);
  for (auto& l : layers_) {
    l->init(rng, scheme);
    l->reset_momentum();
  }
}

std::span<const float> Sequential::forward(std::span<const float> x, std::int64_t batch) {
  if (layers_.empty()) detail::fail("Sequential::forward: the network has no layers");
  std::span<const float> v = x;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const auto t0 = Clock::now();
    v = layers_[i]->forward(v, batch);
    timings_[i].forward_seconds += detail::seconds_since(t0);
    ++timings_[i].forward_calls;
  }
  return v;
}

std::span<const float> Sequential::backward(std::span<const float> dy, bool want_input_grad) {
  return backward(dy, want_input_grad, nullptr);
}

std::span<const float> Sequential::backward(
    std::span<const float> dy, bool want_input_grad,
    const std::function<void(std::size_t)>& gradients_ready) {
  if (layers_.empty()) detail::fail("Sequential::backward: the network has no layers");
  std::span<const float> d = dy;
  for (std::size_t i = layers_.size(); i-- > 0;) {
    const bool want = i > 0 || want_input_grad;
    auto t0 = Clock::now();
    if (pool_after_conv_[i]) {
      // pool i returns dE/d(pre-activation of conv i-1), which conv i-1 takes directly.
      auto& conv = static_cast<Conv2dLayer&>(*layers_[i - 1]);
      d = static_cast<MaxPool2dLayer&>(*layers_[i])
              .backward_through_activation(d, conv.activation());
      timings_[i].backward_seconds += detail::seconds_since(t0);
      ++timings_[i].backward_calls;
      if (gradients_ready) gradients_ready(i);
      --i;
      t0 = Clock::now();
      d = conv.backward_preactivation(d, i > 0 || want_input_grad);
    } else {
      d = layers_[i]->backward(d, want);
    }
    timings_[i].backward_seconds += detail::seconds_since(t0);
    ++timings_[i].backward_calls;
    if (gradients_ready) gradients_ready(i);
  }
  return d;
}

void Sequential::update(const Sgd& sgd) {
  sgd.validate();
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const auto t0 = Clock::now();
    layers_[i]->update(sgd);
    timings_[i].update_seconds += detail::seconds_since(t0);
  }
}

float Sequential::train_step(std::span<const float> x, std::span<const std::int32_t> labels,
                             std::int64_t batch, SoftmaxCrossEntropy& loss, const Sgd& sgd) {
  sgd.validate();
  if (static_cast<std::uint64_t>(batch) != labels.size()) {
    detail::fail("Sequential::train_step: batch " + std::to_string(batch) + " but " +
                 std::to_string(labels.size()) + " labels");
  }
  const auto logits = forward(x, batch);
  const float e = loss.forward(logits, labels, output_shape().size());
  backward(loss.backward());
  update(sgd);
  return e;
}

std::vector<Parameter> Sequential::parameters() {
  std::vector<Parameter> all;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    for (auto& p : layers_[i]->parameters()) {
      p.name = "layer " + std::to_string(i) + " '" + layers_[i]->name() + "' " + p.name;
      all.push_back(std::move(p));
    }
  }
  return all;
}

std::int64_t Sequential::parameter_count() {
  std::int64_t n = 0;
  for (auto& p : parameters()) n += static_cast<std::int64_t>(p.value.size());
  return n;
}

void Sequential::place_views() {
  if (views_current_) return;
  std::vector<std::int64_t> sizes(layers_.size());
  std::int64_t total = 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    for (const auto& p : layers_[i]->parameters())
      sizes[i] += static_cast<std::int64_t>(p.value.size());
    total += sizes[i];
  }
  // New memory first; the layers may still view the old buffers, which live until all moved.
  std::vector<float> values(static_cast<std::size_t>(total)),
      grads(static_cast<std::size_t>(total));
  std::int64_t at = 0;
  try {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const auto off = static_cast<std::size_t>(at), n = static_cast<std::size_t>(sizes[i]);
      layers_[i]->place_parameters(std::span<float>(values).subspan(off, n),
                                   std::span<float>(grads).subspan(off, n));
      at += sizes[i];
    }
  } catch (...) {
    // Layers before the failing one now live in the new memory, which must stay. The failing
    // layer (a placement that throws moves nothing) and every later one were added after the
    // last complete placement, so none of them lives in the old memory being dropped.
    flat_values_.swap(values);
    flat_grads_.swap(grads);
    throw;
  }
  flat_values_.swap(values);
  flat_grads_.swap(grads);
  views_current_ = true;
}

std::span<float> Sequential::parameter_values() {
  place_views();
  return flat_values_;
}

std::span<float> Sequential::parameter_gradients() {
  place_views();
  return flat_grads_;
}

std::int64_t Sequential::parameter_offset(std::size_t i) {
  if (i > layers_.size()) {
    detail::fail("Sequential::parameter_offset: index " + std::to_string(i) + " of " +
                 std::to_string(layers_.size()) + " layers");
  }
  std::int64_t at = 0;
  for (std::size_t j = 0; j < i; ++j) {
    for (const auto& p : layers_[j]->parameters()) at += static_cast<std::int64_t>(p.value.size());
  }
  return at;
}

void Sequential::set_parameters(std::span<const float> values) {
  const auto dst = parameter_values();
  if (values.size() != dst.size()) {
    detail::fail("Sequential::set_parameters: " + std::to_string(values.size()) + " values for " +
                 std::to_string(dst.size()) + " parameters");
  }
  std::copy(values.begin(), values.end(), dst.begin());
}

std::vector<LayerTiming> Sequential::timings() const { return timings_; }

void Sequential::reset_timings() {
  for (auto& t : timings_) {
    const std::string n = t.name;
    t = LayerTiming{};
    t.name = n;
  }
}

// ---------------------------------------------------------------------------------------------
// Parameter files (format in layers.hpp).

namespace {

constexpr char kMagic[8] = {'I', '2', 'G', 'P', 'A', 'R', 'A', 'M'};
constexpr std::uint32_t kVersion = 2;        // written
constexpr std::uint32_t kOldestVersion = 1;  // read: 1 has no layer list
constexpr std::uint32_t kMaxNameBytes = 4096;
constexpr std::uint32_t kMaxRank = 8;

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
void put_u64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
std::uint32_t get_u32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
std::uint64_t get_u64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

std::uint32_t crc_of(const std::uint8_t* p, std::size_t n) { return detail::crc32(0, p, n); }

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

[[noreturn]] void bad_file(const std::string& what) {
  throw std::invalid_argument("im2gemm: parameter file: " + what);
}

// The first 16 bytes: magic and version.
void check_header(const std::uint8_t* b, std::size_t n) {
  if (n < 16) bad_file("truncated: " + std::to_string(n) + " bytes, the header alone needs 16");
  if (std::memcmp(b, kMagic, 8) != 0)
    bad_file("wrong magic: not an im2gemm parameter file (expected \"I2GPARAM\")");
  const std::uint32_t version = get_u32(b + 8);
  if (version < kOldestVersion || version > kVersion) {
    bad_file("version " + std::to_string(version) + " is not supported (this build reads " +
             std::to_string(kOldestVersion) + " to " + std::to_string(kVersion) + ")");
  }
}

}  // namespace

std::vector<std::uint8_t> Sequential::save_bytes() {
  const auto params = parameters();
  std::vector<std::uint8_t> out(kMagic, kMagic + 8);
  put_u32(out, kVersion);
  put_u32(out, static_cast<std::uint32_t>(params.size()));
  for (const auto& p : params) {
    put_u32(out, static_cast<std::uint32_t>(p.shape.size()));
    for (auto d : p.shape) put_u64(out, static_cast<std::uint64_t>(d));
  }
  put_u32(out, static_cast<std::uint32_t>(layers_.size()));
  for (const auto& l : layers_) {
    const std::string n = l->name();
    put_u32(out, static_cast<std::uint32_t>(n.size()));
    out.insert(out.end(), n.begin(), n.end());
  }
  for (const auto& p : params) {
    for (float v : p.value) put_u32(out, std::bit_cast<std::uint32_t>(v));
  }
  put_u32(out, crc_of(out.data(), out.size()));
  return out;
}

void Sequential::save(const std::string& path) {
  const auto bytes = save_bytes();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f)
      throw std::runtime_error("im2gemm: cannot write parameter file " + tmp + ": " +
                               std::strerror(errno));
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) throw std::runtime_error("im2gemm: writing parameter file " + tmp + " failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    throw std::runtime_error("im2gemm: cannot rename " + tmp + " to " + path + ": " + err);
  }
}

void Sequential::load_bytes(std::span<const std::uint8_t> bytes) {
  const std::size_t n = bytes.size();
  const std::uint8_t* b = bytes.data();
  check_header(b, n);
  const std::uint32_t version = get_u32(b + 8);
  if (n < 20) bad_file("truncated: " + std::to_string(n) + " bytes, no room for the checksum");
  const std::uint32_t stored = get_u32(b + n - 4), computed = crc_of(b, n - 4);
  if (stored != computed) {
    char msg[160];
    std::snprintf(msg, sizeof msg,
                  "checksum mismatch (stored 0x%08x, computed 0x%08x): the file is corrupted or "
                  "truncated",
                  stored, computed);
    bad_file(msg);
  }
  auto params = parameters();
  const std::uint32_t count = get_u32(b + 12);
  if (count != params.size()) {
    bad_file("holds " + std::to_string(count) + " tensors, the network has " +
             std::to_string(params.size()));
  }
  const std::size_t body_end = n - 4;
  std::size_t pos = 16;
  for (std::size_t t = 0; t < count; ++t) {
    if (pos + 4 > body_end) bad_file("truncated in the shape of tensor " + std::to_string(t));
    const std::uint32_t rank = get_u32(b + pos);
    pos += 4;
    if (rank < 1 || rank > kMaxRank)
      bad_file("tensor " + std::to_string(t) + " has rank " + std::to_string(rank) + " (1.." +
               std::to_string(kMaxRank) + ")");
    if (pos + 8ull * rank > body_end)
      bad_file("truncated in the shape of tensor " + std::to_string(t));
    std::vector<std::int64_t> shape(rank);
    for (std::uint32_t r = 0; r < rank; ++r, pos += 8) {
      const std::uint64_t d = get_u64(b + pos);
      shape[r] = d > static_cast<std::uint64_t>(INT64_MAX) ? -1 : static_cast<std::int64_t>(d);
    }
    if (shape != params[t].shape) {
      bad_file("tensor " + std::to_string(t) + " (" + params[t].name + ") has shape " +
               shape_str(shape) + " in the file, the network has " + shape_str(params[t].shape));
    }
  }
  if (version >= 2) {  // the layer list: every layer's name, so its geometry, must match
    if (pos + 4 > body_end) bad_file("truncated in the layer list");
    const std::uint32_t layers = get_u32(b + pos);
    pos += 4;
    if (layers != layers_.size()) {
      bad_file("holds " + std::to_string(layers) + " layers, the network has " +
               std::to_string(layers_.size()));
    }
    for (std::uint32_t i = 0; i < layers; ++i) {
      if (pos + 4 > body_end) bad_file("truncated in the layer list");
      const std::uint32_t len = get_u32(b + pos);
      pos += 4;
      if (len > kMaxNameBytes || pos + len > body_end) {
        bad_file("truncated in the name of layer " + std::to_string(i));
      }
      const std::string name(reinterpret_cast<const char*>(b + pos), len);
      pos += len;
      if (name != layers_[i]->name()) {
        bad_file("layer " + std::to_string(i) + " is '" + name +
                 "' in the file, the network has '" + layers_[i]->name() + "'");
      }
    }
  }
  std::size_t values = 0;
  for (const auto& p : params) values += p.value.size();
  if (body_end - pos != 4 * values) {
    bad_file("the values take " + std::to_string(body_end - pos) + " bytes, the shapes need " +
             std::to_string(4 * values));
  }
  // Everything checked: only now touch the network.
  for (auto& p : params) {
    for (auto& v : p.value) {
      v = std::bit_cast<float>(get_u32(b + pos));
      pos += 4;
    }
  }
  for (auto& l : layers_) l->reset_momentum();
}

void Sequential::load(const std::string& path) {
  auto unreadable = [&path](const std::string& why) {
    throw std::invalid_argument("im2gemm: cannot read parameter file " + path + ": " + why);
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) unreadable("it is a directory");
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw std::invalid_argument("im2gemm: cannot open parameter file " + path + ": " +
                                std::strerror(errno));
  // The network fixes the file's size. The header is checked first, then at most one byte
  // more than that size is read: a device (/dev/zero) or a huge file is never read whole.
  // The largest file this network loads: the current version (shapes, layer names, values).
  std::size_t want = 16 + 4 + 4;  // header, checksum, layer count
  for (const auto& p : parameters()) want += 4 + 8 * p.shape.size() + 4 * p.value.size();
  for (const auto& l : layers_) want += 4 + l->name().size();
  std::vector<std::uint8_t> bytes(want + 1);
  std::size_t got = 0;
  auto read_to = [&](std::size_t end) {
    try {
      f.read(reinterpret_cast<char*>(bytes.data() + got), static_cast<std::streamsize>(end - got));
    } catch (const std::ios_base::failure& e) {
      unreadable(e.what());
    }
    got += static_cast<std::size_t>(f.gcount());
    if (f.bad()) unreadable(std::strerror(errno));
  };
  try {
    read_to(16);
    check_header(bytes.data(), got);
    read_to(want + 1);
    if (got > want) {
      bad_file("larger than the " + std::to_string(want) + " bytes this network's parameters take");
    }
    bytes.resize(got);
    load_bytes(bytes);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string(e.what()) + " (" + path + ")");
  }
}

}  // namespace im2gemm
