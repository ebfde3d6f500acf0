// im2gemm: the seed's object model on top of the primitives: layers that own their parameters,
// a softmax cross-entropy loss, a sequential network, SGD, seeded initialisation, a gradient
// check and parameter files. The reader of (gzipped) IDX data files such as Fashion-MNIST is a
// separate library, im2gemm_idx (<im2gemm/idx.hpp>): only it needs zlib.
//
// Conventions of every layer:
//  - Tensors are fp32, NCHW, one sample after another: [batch][channels][height][width].
//    A layer has a fixed per-sample input and output shape (Shape3); the batch is given to each
//    forward call and may change from call to call.
//  - forward(x, batch) returns the layer's output, held in a buffer the layer owns (OVERWRITTEN
//    by every forward; valid until the next forward). It copies whatever backward needs (the
//    input, the output), so x need not outlive the call.
//  - backward(dy) takes dE/d(the layer's output), i.e. of its *activated* output, for the batch
//    of the last forward. It OVERWRITES the parameter gradients (summed over the batch: with a
//    mean loss they are the mean gradient) and returns dE/d(the layer's input) in a buffer the
//    layer owns (OVERWRITTEN by every backward). With want_input_grad = false it skips that
//    computation and returns an empty span (what the first layer of a network does).
//  - A layer with an activation first multiplies dy by its own activation's derivative,
//    computed from its kept output (activation_backward's rule), then calls the primitives
//    with dE/d(pre-activation). The primitive conv2d_backward_data's fused *input* activation is
//    therefore not used: every layer owns its activation's derivative, never its neighbour's.
//  - update(sgd) applies the gradients of the last backward to the parameters.
//  - Bad input throws std::invalid_argument naming the values; the layer is then unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "im2gemm/avgpool2d.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/conv2d.hpp"
#include "im2gemm/maxpool2d.hpp"

namespace im2gemm {

/// The shape of one sample: channels x height x width (a vector of n features is {n, 1, 1}).
struct Shape3 {
  std::int64_t channels = 1, height = 1, width = 1;
  std::int64_t size() const { return channels * height * width; }
  std::string str() const;  ///< "20x24x24"
  friend bool operator==(const Shape3&, const Shape3&) = default;
};

/// A small, fast, portable random generator: xoshiro256** seeded through splitmix64, with its
/// own uniform and normal (Box-Muller) conversions, so the same seed gives the same numbers with
/// every compiler and standard library.
class Rng {
 public:
  explicit Rng(std::uint64_t seed);
  std::uint64_t next();                  ///< 64 random bits
  double uniform();                      ///< [0, 1), 53 bits
  double normal();                       ///< standard normal
  std::uint64_t below(std::uint64_t n);  ///< uniform in [0, n), n >= 1 (unbiased)

 private:
  std::uint64_t s_[4];
  double spare_ = 0.0;
  bool has_spare_ = false;
};

/// Seeded initialisation schemes. Both draw every value from the Rng, weights first, in
/// memory order, so the same seed gives the same parameters.
enum class Init {
  /// Weights normal: He, std sqrt(2/fan_in), for a layer with relu; Xavier (Glorot), std
  /// sqrt(2/(fan_in+fan_out)), otherwise. Biases zero.
  he_xavier,
  /// PyTorch 1.13's default for Conv2d and Linear (kaiming_uniform_ with a = sqrt(5), a He
  /// uniform init with the leaky-relu gain of that slope): weights and biases uniform in
  /// [-1/sqrt(fan_in), 1/sqrt(fan_in)). For comparisons with PyTorch on equal terms.
  pytorch,
};

/// SGD with momentum and weight decay, PyTorch's formulation:
///   v = momentum * v + (grad + weight_decay * w);   w -= learning_rate * v.
/// Weight decay applies to weights only, never to biases. The velocity v starts at zero; a
/// velocity below 1e-30 in magnitude is set to zero (it would otherwise decay into denormals,
/// which are ~50x slower, for a unit whose gradient stays zero).
struct Sgd {
  float learning_rate = 0.01f;
  float momentum = 0.9f;
  float weight_decay = 0.0f;
  void validate() const;  ///< learning_rate > 0, 0 <= momentum < 1, weight_decay >= 0, finite
};

/// The storage of one parameter tensor or its gradient: the layer's own memory until a
/// Sequential moves it into its contiguous buffers (place_in), then a view of that memory.
/// A contiguous range of floats (data, size, begin, end, operator[]), so it converts to a span.
/// Copying a buffer copies the values into the copy's own memory.
class ParameterBuffer {
 public:
  ParameterBuffer() = default;
  ParameterBuffer(const ParameterBuffer& other)
      : own_(other.begin(), other.end()), p_(own_.data()), n_(own_.size()) {}
  ParameterBuffer& operator=(const ParameterBuffer& other) {
    if (this != &other) assign(other.begin(), other.end());
    return *this;
  }
  /// n copies of value, in the buffer's own memory (leaves any placed memory).
  void assign(std::size_t n, float value) {
    own_.assign(n, value);
    p_ = own_.data();
    n_ = n;
  }
  /// Copies the values into dst (exactly size() floats, not overlapping this buffer) and uses
  /// dst from then on; the buffer's own memory is released. dst must outlive every later use.
  void place_in(std::span<float> dst);

  float* data() { return p_; }
  const float* data() const { return p_; }
  std::size_t size() const { return n_; }
  float* begin() { return p_; }
  float* end() { return p_ + n_; }
  const float* begin() const { return p_; }
  const float* end() const { return p_ + n_; }
  float& operator[](std::size_t i) { return p_[i]; }
  const float& operator[](std::size_t i) const { return p_[i]; }

 private:
  void assign(const float* first, const float* last) {
    own_.assign(first, last);
    p_ = own_.data();
    n_ = own_.size();
  }
  std::vector<float> own_;
  float* p_ = nullptr;
  std::size_t n_ = 0;
};

/// A view of one parameter tensor of a layer and its gradient.
struct Parameter {
  std::string name;                 ///< "weights" or "bias"
  std::vector<std::int64_t> shape;  ///< e.g. {F, C, KH, KW}
  std::span<float> value;
  std::span<float> grad;  ///< written by the layer's backward
  bool decay = true;      ///< weight decay applies
};

/// The base of every layer (see the conventions at the top of this file).
class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string name() const = 0;  ///< e.g. "conv 5x5x20 relu"
  virtual Shape3 input_shape() const = 0;
  virtual Shape3 output_shape() const = 0;

  /// x: [batch][input_shape()], batch >= 1. Returns [batch][output_shape()].
  virtual std::span<const float> forward(std::span<const float> x, std::int64_t batch) = 0;
  /// dy: dE/d(output) [batch][output_shape()] for the batch of the last forward.
  /// Returns dE/d(input) [batch][input_shape()], or an empty span if !want_input_grad.
  /// Throws if no forward came first.
  virtual std::span<const float> backward(std::span<const float> dy,
                                          bool want_input_grad = true) = 0;

  /// The layer's parameters and their gradients (none for pooling).
  virtual std::vector<Parameter> parameters() { return {}; }
  /// Moves the parameters into values and their gradients into grads, parameters() order,
  /// one tensor after another (each span holds exactly the parameters' total size), keeping
  /// their current contents; from then on parameters() views that memory, which must outlive
  /// every later use of the layer. Sequential calls it to make its contiguous views.
  /// The base implementation accepts a layer without parameters (empty spans) and throws
  /// std::invalid_argument for any other: a layer with parameters overrides it.
  virtual void place_parameters(std::span<float> values, std::span<float> grads);
  /// Seeded initialisation of the parameters (none for pooling), drawn from rng.
  /// Throws std::invalid_argument for a scheme outside the enum (parameters untouched).
  void init(Rng& rng, Init scheme = Init::he_xavier);

  /// Applies the last backward's gradients with SGD; keeps one velocity buffer per parameter.
  void update(const Sgd& sgd);
  /// Sets the momentum buffers to zero.
  void reset_momentum() { velocity_.clear(); }
  /// The batch of the last forward (0 before the first).
  std::int64_t batch() const { return batch_; }

 protected:
  /// Throws unless x holds batch * input_shape().size() elements and batch >= 1.
  void check_forward(const char* who, std::span<const float> x, std::int64_t batch) const;
  /// Throws unless a forward came first and dy holds batch() * output_shape().size().
  void check_backward(const char* who, std::span<const float> dy) const;
  std::int64_t batch_ = 0;
  /// What init() does once the scheme is validated.
  virtual void do_init(Rng& rng, Init scheme) { (void)rng, (void)scheme; }

 private:
  std::vector<std::vector<float>> velocity_;
};

/// A convolution layer: y = act(conv(x, w) + b). Owns w [F][C/groups][KH][KW] and b [F].
/// For init: fan_in = C/groups*KH*KW, fan_out = F/groups*KH*KW.
class Conv2dLayer : public Layer {
 public:
  /// geometry.batch is ignored (each forward gives the batch); validated like the primitive.
  Conv2dLayer(const Conv2dShape& geometry, Activation act);
  /// A square kernel with equal stride and padding on both axes.
  Conv2dLayer(Shape3 input, std::int64_t filters, std::int64_t kernel, Activation act,
              std::int64_t stride = 1, std::int64_t pad = 0);

  std::string name() const override;
  Shape3 input_shape() const override;
  Shape3 output_shape() const override;
  std::span<const float> forward(std::span<const float> x, std::int64_t batch) override;
  std::span<const float> backward(std::span<const float> dy, bool want_input_grad = true) override;
  /// backward from delta = dE/d(pre-activation output) instead of dE/d(output): the same
  /// gradients, without the pass that multiplies by the activation's derivative.
  std::span<const float> backward_preactivation(std::span<const float> delta,
                                                bool want_input_grad = true);
  std::vector<Parameter> parameters() override;
  void place_parameters(std::span<float> values, std::span<float> grads) override;

 protected:
  void do_init(Rng& rng, Init scheme) override;

 public:
  Activation activation() const { return act_; }
  const Conv2dShape& geometry() const { return shape_; }
  std::span<float> weights() { return w_; }
  std::span<float> bias() { return b_; }
  std::span<const float> weight_grad() const { return dw_; }
  std::span<const float> bias_grad() const { return db_; }

 private:
  Conv2dShape shape_;
  Activation act_;
  ParameterBuffer w_, b_, dw_, db_;
  std::vector<float> x_, y_, delta_, dx_;
};

/// A max pooling layer (no parameters). Keeps the argmax of the last forward.
class MaxPool2dLayer : public Layer {
 public:
  /// geometry.batch is ignored.
  explicit MaxPool2dLayer(const MaxPool2dShape& geometry);
  /// A square window; stride 0 means stride = kernel.
  MaxPool2dLayer(Shape3 input, std::int64_t kernel, std::int64_t stride = 0, std::int64_t pad = 0,
                 bool ceil_mode = false);

  std::string name() const override;
  Shape3 input_shape() const override;
  Shape3 output_shape() const override;
  std::span<const float> forward(std::span<const float> x, std::int64_t batch) override;
  std::span<const float> backward(std::span<const float> dy, bool want_input_grad = true) override;
  /// When this layer's input is act(u), the output of the layer before: returns dE/du, the
  /// previous layer's dE/d(pre-activation), by scaling dy with act' of this layer's own
  /// output before the scatter. Exact: each window's max is the input value at its argmax, and
  /// every other input cell gets zero either way. Saves the previous layer a pass over its
  /// (4x larger) output; see Conv2dLayer::backward_preactivation.
  std::span<const float> backward_through_activation(std::span<const float> dy, Activation act);
  const MaxPool2dShape& geometry() const { return shape_; }

 private:
  MaxPool2dShape shape_;
  std::vector<float> y_, dx_;
  std::vector<std::int32_t> argmax_;
};

/// An average pooling layer (no parameters), PyTorch's AvgPool2d: count_include_pad and
/// ceil_mode as in AvgPool2dShape. A window as large as the input is global average pooling.
class AvgPool2dLayer : public Layer {
 public:
  /// geometry.batch is ignored.
  explicit AvgPool2dLayer(const AvgPool2dShape& geometry);
  /// A square window; stride 0 means stride = kernel.
  AvgPool2dLayer(Shape3 input, std::int64_t kernel, std::int64_t stride = 0, std::int64_t pad = 0,
                 bool ceil_mode = false, bool count_include_pad = true);

  std::string name() const override;
  Shape3 input_shape() const override;
  Shape3 output_shape() const override;
  std::span<const float> forward(std::span<const float> x, std::int64_t batch) override;
  std::span<const float> backward(std::span<const float> dy, bool want_input_grad = true) override;
  const AvgPool2dShape& geometry() const { return shape_; }

 private:
  AvgPool2dShape shape_;
  std::vector<float> y_, dx_;
};

/// A fully connected layer: y[n] = act(W x[n] + b), W [out][in] (in = input.size(): the input
/// sample is flattened), b [out]; output shape {out, 1, 1}. Forward is one cblas_sgemm; backward
/// two (weights, and data if wanted). For init: fan_in = in, fan_out = out.
class DenseLayer : public Layer {
 public:
  DenseLayer(Shape3 input, std::int64_t outputs, Activation act);

  std::string name() const override;
  Shape3 input_shape() const override { return in_; }
  Shape3 output_shape() const override { return Shape3{out_, 1, 1}; }
  std::span<const float> forward(std::span<const float> x, std::int64_t batch) override;
  std::span<const float> backward(std::span<const float> dy, bool want_input_grad = true) override;
  std::vector<Parameter> parameters() override;
  void place_parameters(std::span<float> values, std::span<float> grads) override;

 protected:
  void do_init(Rng& rng, Init scheme) override;

 public:
  Activation activation() const { return act_; }
  std::span<float> weights() { return w_; }
  std::span<float> bias() { return b_; }

 private:
  Shape3 in_;
  std::int64_t out_;
  Activation act_;
  ParameterBuffer w_, b_, dw_, db_;
  std::vector<float> x_, y_, delta_, dx_;
};

/// Softmax followed by cross-entropy against integer labels, averaged over the batch:
///   E = (1/N) sum_n [ log sum_k exp(z_nk) - z_n,label(n) ],
/// computed stably (the row maximum is subtracted first; sums in double).
class SoftmaxCrossEntropy {
 public:
  /// logits [batch][classes]; labels [batch], each in [0, classes). Returns E.
  /// Keeps the probabilities for backward. Throws on bad sizes or labels (state unchanged).
  float forward(std::span<const float> logits, std::span<const std::int32_t> labels,
                std::int64_t classes);
  /// dE/d(logits) = (softmax(z) - onehot(label)) / batch, [batch][classes], in a buffer the
  /// loss owns (OVERWRITTEN by every call). Throws if no forward came first.
  std::span<const float> backward();
  /// The softmax of the last forward, [batch][classes].
  std::span<const float> probabilities() const { return p_; }
  /// How many samples of the last forward had their label as the (first) largest logit.
  std::int64_t correct() const { return correct_; }

 private:
  std::vector<float> p_, dz_;
  std::vector<std::int32_t> labels_;
  std::int64_t classes_ = 0;
  std::int64_t correct_ = 0;
};

/// Time spent in one layer since the last reset_timings().
struct LayerTiming {
  std::string name;
  double forward_seconds = 0.0, backward_seconds = 0.0, update_seconds = 0.0;
  std::int64_t forward_calls = 0, backward_calls = 0;
};

/// Layers chained one after another. Every layer's input shape must equal the previous
/// layer's output shape (add() throws otherwise and leaves the network unchanged).
/// backward fuses one pair: a Conv2dLayer with an activation followed by a MaxPool2dLayer runs
/// MaxPool2dLayer::backward_through_activation then Conv2dLayer::backward_preactivation (the
/// same gradients; bitwise the same for relu and identity).
class Sequential {
 public:
  /// input: the per-sample shape the first layer must take.
  explicit Sequential(Shape3 input);

  /// Appends a layer whose input_shape() must equal output_shape() of the network so far.
  Layer& add(std::unique_ptr<Layer> layer);
  /// Convenience: layers whose input shape is the network's current output shape.
  Conv2dLayer& add_conv2d(std::int64_t filters, std::int64_t kernel, Activation act,
                          std::int64_t stride = 1, std::int64_t pad = 0);
  MaxPool2dLayer& add_maxpool2d(std::int64_t kernel, std::int64_t stride = 0, std::int64_t pad = 0,
                                bool ceil_mode = false);
  AvgPool2dLayer& add_avgpool2d(std::int64_t kernel, std::int64_t stride = 0, std::int64_t pad = 0,
                                bool ceil_mode = false, bool count_include_pad = true);
  /// Average pooling over the whole plane: output {channels, 1, 1}.
  AvgPool2dLayer& add_global_avgpool2d();
  DenseLayer& add_dense(std::int64_t outputs, Activation act);

  Shape3 input_shape() const { return input_; }
  Shape3 output_shape() const;  ///< the last layer's, or the input shape if empty
  std::size_t size() const { return layers_.size(); }
  Layer& layer(std::size_t i);
  const Layer& layer(std::size_t i) const;

  /// Seeded initialisation of every layer in order from one Rng(seed): same seed, same weights.
  /// Also resets the momentum buffers.
  void init(std::uint64_t seed, Init scheme = Init::he_xavier);
  /// x [batch][input_shape()] -> [batch][output_shape()] (the last layer's buffer).
  std::span<const float> forward(std::span<const float> x, std::int64_t batch);
  /// dy = dE/d(network output). Runs every layer's backward; the first layer skips its input
  /// gradient unless want_input_grad, in which case dE/d(network input) is returned.
  std::span<const float> backward(std::span<const float> dy, bool want_input_grad = false);
  /// The same, calling gradients_ready(i) as soon as layer i's parameter gradients are final,
  /// for i = size()-1 down to 0 (every layer, with or without parameters): a data-parallel
  /// trainer starts moving the gradients of the last layers while the first ones still run.
  std::span<const float> backward(std::span<const float> dy, bool want_input_grad,
                                  const std::function<void(std::size_t)>& gradients_ready);
  void update(const Sgd& sgd);
  /// forward, loss, backward, update on one minibatch; returns the loss.
  float train_step(std::span<const float> x, std::span<const std::int32_t> labels,
                   std::int64_t batch, SoftmaxCrossEntropy& loss, const Sgd& sgd);

  /// All layers' parameters, first layer first (names prefixed "layer <i> <layer name> ").
  std::vector<Parameter> parameters();
  std::int64_t parameter_count();

  /// Contiguous views, what a data-parallel trainer needs (one allreduce, or a few buckets,
  /// moves every gradient of a step): every parameter of the network in one buffer, in
  /// parameters() order (layer 0 first, one tensor after another), and every gradient in a
  /// second buffer of the same layout. The first call after an add() moves the layers'
  /// parameters and gradients there (values kept; parameters() then views the same memory);
  /// the spans stay valid until the next add(). Writing into parameter_values() sets the
  /// parameters; backward() overwrites parameter_gradients(). Throws std::invalid_argument if
  /// a layer with parameters does not implement Layer::place_parameters (network unchanged).
  std::span<float> parameter_values();
  std::span<float> parameter_gradients();
  /// Where layer i's parameters start in the contiguous views; parameter_offset(size()) is
  /// parameter_count(). Layer i's gradients are final, and no later backward step writes them,
  /// once backward has passed layer i (see backward's gradients_ready).
  std::int64_t parameter_offset(std::size_t i);
  /// Copies values (parameter_count() floats, the layout of parameter_values()) into every
  /// parameter. The momentum buffers are kept. Throws std::invalid_argument naming both sizes
  /// on a size mismatch (network unchanged).
  void set_parameters(std::span<const float> values);

  std::vector<LayerTiming> timings() const;
  void reset_timings();

  /// Parameter file, version 2, all integers and floats little-endian:
  ///   offset 0   8 bytes  magic "I2GPARAM"
  ///          8   u32      version (2)
  ///         12   u32      T, the number of parameter tensors (parameters() order)
  ///         16   T times: u32 rank R (1..8), then R x u64 dims
  ///              u32 L, the number of layers, then L times: u32 n, then n bytes: the
  ///                layer's name() (it spells every geometry field that is not a parameter
  ///                shape: stride, padding, ceil mode, count_include_pad, activation)
  ///              then T times: the tensor's values, f32, row-major
  ///        end-4 u32      CRC-32 (zlib's crc32, ISO-HDLC) of every byte before it
  /// Version 1 is the same without the layer list; load still reads it (checking only the
  /// tensor shapes). The file holds parameters and the layer names, no momentum; load checks
  /// every shape and (version 2) every layer name against the network.
  std::vector<std::uint8_t> save_bytes();
  /// Writes save_bytes() to path.tmp then renames it to path. Throws std::runtime_error if the
  /// file cannot be written.
  void save(const std::string& path);
  /// Throws std::invalid_argument saying what is wrong (wrong magic or version, truncated,
  /// checksum mismatch, tensor count or shape different from the network, a layer name
  /// different from the network's, trailing bytes)
  /// and leaves the network as it was. On success sets every parameter and resets momentum.
  void load_bytes(std::span<const std::uint8_t> bytes);
  /// Reads path and loads it as load_bytes does. Also throws std::invalid_argument if the path
  /// cannot be read (missing, a directory, a read error) or holds more bytes than this
  /// network's parameter file takes: the header is checked after 16 bytes, and never more than
  /// that size plus one byte is read (a device such as /dev/zero is rejected at once).
  void load(const std::string& path);

 private:
  Shape3 input_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<LayerTiming> timings_;
  std::vector<bool> pool_after_conv_;  ///< [i]: layer i is a MaxPool2dLayer after a Conv2dLayer
  /// The contiguous views' memory; views_current_ is false until the layers are placed in it
  /// after the last add().
  std::vector<float> flat_values_, flat_grads_;
  bool views_current_ = false;
  void place_views();
};

/// Options and result of gradient_check.
struct GradientCheckOptions {
  double epsilon = 3e-3;             ///< finite-difference step
  std::int64_t max_per_tensor = 48;  ///< entries checked per tensor (all if the tensor is smaller)
  std::uint64_t seed = 1;            ///< picks the entries and the output weighting r
  /// Errors are |analytic - numeric| / max(|analytic|, |numeric|, scale_floor).
  double scale_floor = 1e-2;
};
struct GradientCheckResult {
  double max_error = 0.0;    ///< the largest error over every checked entry
  std::int64_t checked = 0;  ///< entries compared
  std::int64_t kinks = 0;    ///< entries where a one-sided difference matched better (near a
                             ///< ReLU/max kink): the analytic value matched one side
  std::string worst;         ///< which entry had max_error, with both values
};

/// The seed tutorial's check: finite differences against backward. For E = sum_i r_i y_i with a
/// fixed random r (so dE/dy = r), compares backward's dE/dx and every parameter gradient with
/// (E(v + eps) - E(v - eps)) / 2 eps, E accumulated in double, on up to max_per_tensor seeded
/// entries of the input and of each parameter. Near a kink (ReLU at 0, a max changing winner)
/// the central difference is meaningless: the entry's error is then the smallest of the
/// central and the two one-sided differences (and counted in kinks). Leaves the parameters as
/// they were and the layer as after forward(x) and backward(r).
GradientCheckResult gradient_check(Layer& layer, std::span<const float> x, std::int64_t batch,
                                   const GradientCheckOptions& options = {});
/// The same check of the loss's backward against its forward (dE/dlogits, all entries up to
/// max_per_tensor).
GradientCheckResult gradient_check(SoftmaxCrossEntropy& loss, std::span<const float> logits,
                                   std::span<const std::int32_t> labels, std::int64_t classes,
                                   const GradientCheckOptions& options = {});

}  // namespace im2gemm
