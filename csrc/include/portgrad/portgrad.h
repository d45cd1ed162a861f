/// @brief portgrad's public C++ API: load a net saved from Python (`net.save(path)`), evaluate its
/// outputs and every NetPortGradient form, in float32 or float64, without Python.
///
///     #include <portgrad/portgrad.h>
///     portgrad::Net net = portgrad::Net::load("model.pgnet");
///     portgrad::Array<float> x{{128, 2}, values};                 // a batch of 128 examples
///     auto y  = net.output<float>({{"Input", x}});                 // (128, 1)
///     auto gx = net.input_gradient<float>({{"Input", x}}, "Input");   // d sum(y) / dx, (128, 2)
///     auto gw = net.array_gradient<float>({{"Input", x}}, "0/Weights"); // summed over the batch
///     portgrad::enable_gpu();                                      // portgrad/gpu.h, portgrad::cuda
///     auto yg = net.on(portgrad::Device::GPU).output<float>({{"Input", x}});
///
/// Semantics are Python's: an input of exactly the port's shape is one example, one more leading
/// axis a batch; gradients are of the sum of all outputs unless gradients are imposed on outputs
/// (then they are the vector-Jacobian product); input gradients are per example, array gradients
/// summed over the batch. Ports that take class indices ("Index" targets) take integral values
/// (as T through Array<T>, as int64_t through Buffers).
///
/// Errors: portgrad::ValueError, TypeError, IndexError, KeyError and OSError (portgrad/errors.h),
/// with the messages Python shows. Nothing is printed, nothing aborts.
///
/// Thread safety: one Net may be evaluated from many threads at once. Each call checks its inputs
/// on its own stack; the compiled plan for a (query, batch size, precision) holds the scratch memory
/// and serves one call at a time (a per-plan mutex), so concurrent calls of different shapes run in
/// parallel and calls of the same shape take turns. Copies of a Net share the loaded net.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "portgrad/errors.h"

namespace portgrad {
// The inline namespace keeps these symbols apart from the engine's internal classes of the same
// names; users write portgrad::Net.
inline namespace api {

// The library's version, "0.1.0".
const char* version();

// A dense array in C order that owns its values: values.size() == product of shape.
template <typename T>
struct Array {
  std::vector<int64_t> shape;
  std::vector<T> values;
};

// An input or output port: its name and per-example shape.
struct Port {
  std::string name;
  std::vector<int64_t> shape;
  bool class_indices = false;  // an input that takes 0-based class indices (has no gradient)
};

// A learned array: its path ("0/Weights", "block/2/Biases") and shape.
struct ArrayInfo {
  std::string path;
  std::vector<int64_t> shape;
};

// Where an evaluation runs. Device::GPU needs a GPU backend in the process: link portgrad::cuda
// and call portgrad::enable_gpu() once (portgrad/gpu.h).
enum class Device { CPU, GPU };

// What one evaluation computes; results come back in the order of each list.
struct Query {
  std::vector<std::string> outputs;          // output ports ("Output", "Loss")
  std::vector<std::string> input_gradients;  // NetPortGradient("Input"): per example, the input's shape
  std::vector<std::string> array_gradients;  // NetPortGradient("0/Weights"): summed over the batch
  // Outputs whose gradient the caller imposes (a VJP); empty: gradients of the sum of all outputs.
  std::vector<std::string> imposed;
  // NetPortGradient(path, PerExample=True): each example's own gradient, [batch, ...array shape].
  std::vector<std::string> array_gradients_per_example;
  // Forward mode (NetPortTangent): input ports whose tangent the caller gives (`tangents` of
  // evaluate, each the input's shape), and output ports whose tangent to return: the
  // Jacobian-vector product J v, per example (tangents on several inputs add).
  std::vector<std::string> tangent_inputs;
  std::vector<std::string> tangent_outputs;
  // Where it runs (TargetDevice): on the GPU, arrays and Buffers may be host memory or memory on
  // that GPU (results are copied back to wherever their buffer is).
  Device device = Device::CPU;
  int device_index = 0;
};

template <typename T>
struct Result {
  std::vector<Array<T>> outputs, input_gradients, array_gradients;  // in the Query's order
  std::vector<Array<T>> array_gradients_per_example, output_tangents;
};

// Caller-owned memory for one evaluation of `batch` examples: every array C-contiguous with a
// leading batch axis (array gradients have the array's shape), in the order of inputs() and of the
// Query's lists. Class-index inputs point to int64_t, all others to T. Results may be written
// while the evaluation runs; a result buffer that overlaps an input or an imposed gradient (an input
// gradient written over its input) is filled only at the end, so that too gives the right numbers.
template <typename T>
struct Buffers {
  std::vector<const void*> inputs;   // one per input port
  std::vector<const T*> imposed;     // one per Query::imposed, the output's shape
  std::vector<T*> outputs;           // one per Query::outputs
  std::vector<T*> input_gradients;   // one per Query::input_gradients
  std::vector<T*> array_gradients;   // one per Query::array_gradients
  std::vector<T*> array_gradients_per_example;  // one per Query::array_gradients_per_example
  std::vector<const T*> input_tangents;         // one per Query::tangent_inputs, the input's shape
  std::vector<T*> output_tangents;              // one per Query::tangent_outputs
};

template <typename T>
using Inputs = std::map<std::string, Array<T>>;  // port name -> data (one example or a batch)

class Net {
 public:
  // Loads a file written by Python's net.save(path). OSError if it cannot be read, ValueError if
  // it is malformed (the loader checks every offset, shape and size against the file's size).
  static Net load(const std::string& path);
  // The same for a file's bytes in memory.
  static Net load_bytes(const void* data, size_t size);

  const std::vector<Port>& inputs() const;
  const std::vector<Port>& outputs() const;
  std::vector<ArrayInfo> arrays() const;
  // A learned array's values (NetExtract), as T.
  template <typename T>
  Array<T> array(const std::string& path) const;

  // The same net, whose output(), input_gradient() and array_gradient() run on `device` (a Query
  // says where it runs itself). Shares the loaded net and its compiled plans.
  Net on(Device device, int device_index = 0) const;

  // Everything a Query asks for, in new arrays. `imposed` maps output ports to imposed gradients,
  // `tangents` input ports to their tangents (Query::tangent_inputs).
  template <typename T>
  Result<T> evaluate(const Query& query, const Inputs<T>& inputs, const Inputs<T>& imposed = {},
                     const Inputs<T>& tangents = {}) const;
  // The net's output: `port` may be omitted when the net has one output.
  template <typename T>
  Array<T> output(const Inputs<T>& inputs, const std::string& port = "") const;
  // NetPortGradient(port): per example, the shape of `inputs[port]`.
  template <typename T>
  Array<T> input_gradient(const Inputs<T>& inputs, const std::string& port = "Input",
                          const Inputs<T>& imposed = {}) const;
  // NetPortGradient(path): the array's shape, summed over the batch.
  template <typename T>
  Array<T> array_gradient(const Inputs<T>& inputs, const std::string& path, const Inputs<T>& imposed = {}) const;
  // NetPortJacobian(input, output): per example, d output / d input, shape (batch, *output shape,
  // *input shape) (no batch axis for one example). Forward mode: one forward pass with a tangent
  // per input element beside it. `output` may be omitted when the net has one output.
  template <typename T>
  Array<T> jacobian(const Inputs<T>& inputs, const std::string& input = "Input", const std::string& output = "") const;

  // The same into caller-owned memory: no allocation once the plan for this query and batch
  // size is compiled (the first call compiles it).
  template <typename T>
  void evaluate(const Query& query, int64_t batch, const Buffers<T>& buffers) const;

  struct Impl;

 private:
  explicit Net(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  Query query() const;  // an empty Query on this Net's device
  std::shared_ptr<Impl> impl_;
  Device device_ = Device::CPU;
  int device_index_ = 0;
};

}  // namespace api
}  // namespace portgrad
