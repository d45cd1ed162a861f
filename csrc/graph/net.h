/// @brief Net: a DAG of layer nodes with named ports, built from a spec; evaluation through
/// cached plans, one per request shape.
///
/// Thread safety: a Net may be evaluated from many threads at once. Each plan serves one call at a
/// time (a per-plan mutex); calls with different requests or batch sizes run in parallel.
/// set_param must not race with evaluation.
#pragma once
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "core/json.h"
#include "layers/layer.h"

namespace portgrad {

// The most elements one value may have per example (and an array in all): size arithmetic on
// anything smaller cannot overflow int64, whatever the batch (which is checked against it too).
constexpr int64_t kMaxValueElements = int64_t(1) << 40;
// A declared input dimension whose extent comes with the data ("Varying": a sequence of any
// length). Only declarations hold it; a compiled Net is given every varying port's length.
constexpr int64_t kVarying = -1;

struct PortInfo {
  std::string name;
  int value = -1;
};

struct ValueInfo {
  MaybeShape shape;                // per example
  int64_t index_bound = 0;         // > 0: holds 0-based class indices (int64) below this bound
  int producer = -1;               // node, or -1 for a net input
  std::vector<std::pair<int, int>> consumers;  // (node, input slot)
};

struct NodeInfo {
  std::string path;                // "0", "block/2"; "" for a net that is a single layer
  std::string where;               // how errors name it: "layer 0 (LinearLayer)"
  std::unique_ptr<Layer> layer;
  std::vector<int> in, out, params;
  // {array name: shared array name} of its spec's "shared" option: those arrays are the net's
  // NetSharedArray of that name, one array for every layer that names it.
  std::vector<std::pair<std::string, std::string>> shared;
  // Inside `mapped` NetMapOperators: the layer sees its inputs without that many leading axes, and
  // runs on batch x map_count examples (those axes' extents, multiplied; known after inference).
  int mapped = 0;
  int64_t map_count = 1;
};

struct ParamInfo {
  std::string path;                // "0/Weights"; "Weights" on a single layer
  Shape shape;
  bool learnable = true;        // see ParamDecl
  bool differentiable = true;
  bool nonnegative = false;
  ParamDecl::Init init = ParamDecl::Init::Zeros;
  int64_t fan_in = 0, fan_out = 0;
  std::vector<int> users;          // nodes that use it: more than one for a shared array
  bool shared = false;             // a NetSharedArray: `path` is its name
  Tensor f32, f64;                 // the same values in both working precisions
  bool set = false;
};

// What one evaluation computes. Indices refer to Net::inputs(), outputs(), params().
struct Request {
  int64_t batch = 1;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int device_index = 0;            // which GPU (TargetDevice -> ("GPU", i))
  std::vector<int> outputs;        // outputs to return
  std::vector<int> input_grads;    // input ports whose gradient to return
  std::vector<int> param_grads;    // parameters whose (batch-summed) gradient to return
  // Parallel to param_grads (empty: none): 1 where that gradient is wanted per example instead,
  // [batch, ...array shape] (NetPortGradient(..., PerExample=True)).
  std::vector<char> per_example;
  // Outputs whose gradient the caller imposes. If empty, gradients are of the sum of all outputs;
  // otherwise of sum(output * imposed) over these outputs, and the other outputs contribute zero.
  std::vector<int> imposed;
  // Internal values to return as well (NetPort(("block", "act"), "Output")): value ids.
  std::vector<int> probes;
  // Forward mode: inputs and arrays whose tangent the caller imposes (several add), and outputs
  // whose tangent (the JVP) to return.
  std::vector<int> tangent_inputs, tangent_params, tangent_outputs;
  // Second order: inputs and arrays whose gradient's tangent to return (NetPortTangent(
  // NetPortGradient(...)): Hessian-vector products of the gradients' function).
  std::vector<int> grad_tangent_inputs, grad_tangent_params;
  // Forward mode with several tangents per example (the columns of a Jacobian): each imposed input
  // tangent and each returned output tangent holds `directions` blocks of [batch, ...], direction
  // by direction, and the forward pass runs once. With more than one, arrays take no tangent and no
  // second-order result is asked for.
  int64_t directions = 1;
  bool train = false;              // NetEvaluationMode "Train"

  bool operator==(const Request& o) const {
    return batch == o.batch && dtype == o.dtype && device == o.device && device_index == o.device_index &&
           outputs == o.outputs &&
           input_grads == o.input_grads && param_grads == o.param_grads && per_example == o.per_example &&
           imposed == o.imposed &&
           probes == o.probes && tangent_inputs == o.tangent_inputs && tangent_params == o.tangent_params &&
           tangent_outputs == o.tangent_outputs && grad_tangent_inputs == o.grad_tangent_inputs &&
           grad_tangent_params == o.grad_tangent_params && directions == o.directions && train == o.train;
  }
};

// Caller-owned memory for one evaluation, in the order of the Request's lists. Every array is
// C-contiguous, of the request's dtype (int64 for index inputs), with a leading batch axis.
// For a GPU request each array may be host memory or memory on a GPU (the engine asks the backend
// which, and copies accordingly).
struct Buffers {
  std::vector<const void*> inputs;       // one per net input
  std::vector<const void*> imposed;      // one per Request::imposed
  std::vector<void*> outputs;            // one per Request::outputs
  std::vector<void*> input_grads;        // one per Request::input_grads
  std::vector<void*> param_grads;        // one per Request::param_grads ([batch, ...] where per example)
  std::vector<void*> probes;             // one per Request::probes
  std::vector<const void*> input_tangents;  // one per Request::tangent_inputs ([directions, batch, ...])
  std::vector<const void*> param_tangents;  // one per Request::tangent_params (the array's shape)
  std::vector<void*> output_tangents;       // one per Request::tangent_outputs ([directions, batch, ...])
  std::vector<void*> input_grad_tangents;   // one per Request::grad_tangent_inputs
  std::vector<void*> param_grad_tangents;   // one per Request::grad_tangent_params
  uint64_t seed = 0;                     // random seed of this evaluation (Train mode)
};

class Plan;
class Trainer;

class Net {
 public:
  // `input_shapes` gives per-example shapes for input ports the spec leaves undeclared (or
  // repeats declared ones, which must then agree). `max_param_elements` (>= 0) bounds the total
  // size of the arrays, checked before any is allocated: a file loader passes what the file holds,
  // so a hostile spec cannot make the net allocate more.
  Net(const json::Value& spec, const std::vector<std::pair<std::string, Shape>>& input_shapes,
      int64_t max_param_elements = -1);
  ~Net();
  // The input ports of a spec and the shapes it declares for them (before any inference).
  static std::vector<std::pair<std::string, MaybeShape>> declared_inputs(const json::Value& spec);
  Net(const Net&) = delete;
  Net& operator=(const Net&) = delete;

  const std::vector<PortInfo>& inputs() const { return inputs_; }
  const std::vector<PortInfo>& outputs() const { return outputs_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  const std::vector<ValueInfo>& values() const { return values_; }
  const std::vector<NodeInfo>& nodes() const { return nodes_; }
  const std::vector<int>& order() const { return order_; }  // nodes in topological order
  const Shape& value_shape(int v) const { return *values_[v].shape; }
  int find_param(const std::string& path) const;  // -1 if none
  // The value at a layer's port: path "block/act" (or "" for a single-layer net), port "Output";
  // the port may be an input or an output of that layer. -1 if none.
  int find_value(const std::string& path, const std::string& port) const;
  // Copies parameter p, in the given precision, into `out` (its shape's element count).
  void get_param(int p, DType dtype, void* out) const;

  // Copies `data` (param's shape, given dtype) into both working precisions.
  void set_param(int p, const void* data, DType dtype);
  void check_initialized() const;

  // The error for an out-of-range value (`shown` as the caller prints it) of index input port
  // `input`: named a "class index" of "classes" (a loss's target), or an "index" of "rows of the
  // embedding" (an EmbeddingLayer's input).
  IndexError index_out_of_range(int input, const std::string& shown) const;
  // Checks the request and the inputs (finite reals, in-range indices), then runs the cached plan.
  void evaluate(const Request& r, const Buffers& b);
  size_t plan_count() const;
  // The schedule of the plan for this request (compiled if needed), one line a step.
  std::vector<std::string> describe_plan(const Request& r);

 private:
  struct Built {
    std::vector<std::pair<std::string, int>> in, out;
  };
  Net() = default;
  Built build(const json::Value& spec, const std::string& path,
              const std::vector<std::pair<std::string, int>>& bound, int depth);
  void declare(int value, const Shape& shape, const std::string& what);
  Built build_graph(const json::Value& spec, const std::string& path,
                    const std::vector<std::pair<std::string, int>>& bound, int depth);
  int resolve(int v) const;   // follows graph edges (alias_) to the value that feeds v
  void link();                // applies alias_ everywhere, then checks and orders the DAG
  void infer_shapes();
  void validate(const Request& r, const Buffers& b) const;
  std::shared_ptr<Plan> plan_for(const Request& r);

  std::vector<ValueInfo> values_;
  std::vector<NodeInfo> nodes_;
  std::vector<PortInfo> inputs_, outputs_;
  std::vector<ParamInfo> params_;
  std::vector<int> order_;  // nodes in topological order
  std::vector<int> alias_;  // per value: the value a graph edge feeds it from, or -1
  struct Declaration {
    int value;
    Shape shape;
    std::string what;
    int mapped = 0;  // made inside this many NetMapOperators: the shape of one element
  };
  std::vector<Declaration> declarations_;
  int mapping_ = 0;  // while building: how many NetMapOperators enclose what is being built  // declared port shapes, checked once the DAG is linked
  int64_t param_budget_ = -1;  // max_param_elements of the constructor

  // Compiled plans, most recently used first, found by request in O(1), and bounded: at most
  // kMaxPlans, and no more than kMaxPlanBytes of memory together beyond the newest (a service fed
  // every batch size from 1 to 4000 kept 4000 plans, 10 GiB, before). A caller holds the plan it
  // runs (shared_ptr), so an evicted plan lives until its last call returns.
  struct RequestHash {
    size_t operator()(const Request& r) const;
  };
  static constexpr size_t kMaxPlans = 32;
  static constexpr size_t kMaxPlanBytes = size_t(2) << 30;
  mutable std::mutex plans_mu_;
  std::list<std::pair<Request, std::shared_ptr<Plan>>> plans_;
  std::unordered_map<Request, std::list<std::pair<Request, std::shared_ptr<Plan>>>::iterator, RequestHash> plan_index_;
  size_t plan_bytes_ = 0;

  friend class Plan;
  friend class Trainer;  // runs its plans itself, to move moving statistics between steps
};

}  // namespace portgrad
