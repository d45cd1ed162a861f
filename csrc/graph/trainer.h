/// @brief Training (NetTrain's engine): one call per step runs the Train-mode forward and backward
/// of a loss output, then updates every learned array in place with an optimiser kernel
/// (kernels/optim.h) and moves the layers' moving statistics (BatchNormalizationLayer). The
/// Trainer works on a Net of its own: the net a user holds is never changed (nets are values).
/// A step allocates nothing once its batch size has been seen: gradients, optimiser state and the
/// plan are kept.
///
/// On the GPU the arrays being trained live in the device copies of the plan that ran last (each
/// plan holds its own); a plan about to run takes them from there first, and download() brings them
/// back into the Net's host arrays (for a checkpoint, or the trained net).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "graph/net.h"
#include "kernels/optim.h"

namespace portgrad {

enum class OptimMethod { SGD, Adam, RMSProp };

class Trainer {
 public:
  // `net` is the Trainer's own (it changes its arrays); `loss` an output index whose values (per
  // example) are the loss; `arrays` the indices of the arrays to learn (learnable, differentiable).
  // `base` holds the method's coefficients; each step sets lr, the batch scale and the bias
  // corrections.
  Trainer(Net& net, int loss, std::vector<int> arrays, OptimMethod method, const kernels::OptimStep& base, DType dtype,
          Device device = Device::CPU, int device_index = 0);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  // One step on a batch (`inputs`: one host pointer per net input, [batch, ...]); returns its mean loss.
  double step(const std::vector<const void*>& inputs, int64_t batch, double lr, uint64_t seed);
  // The mean loss of a batch in Test mode (validation), with the arrays as they are now.
  double loss(const std::vector<const void*>& inputs, int64_t batch);
  // The arrays as trained so far into the Net's host arrays (GPU runs; nothing to do on the CPU).
  void download();
  const Net& net() const { return net_; }
  int64_t steps() const { return steps_; }
  void set_steps(int64_t t) { steps_ = t; }
  // Optimiser state s of array k of `arrays` (the array's shape, the trainer's precision), for
  // checkpoints: copied out to / in from host memory.
  void read_state(size_t k, size_t s, void* host) const;
  void write_state(size_t k, size_t s, const void* host);
  size_t state_count() const { return method_ == OptimMethod::Adam ? 2 : 1; }
  const std::vector<int>& arrays() const { return arrays_; }
  DType dtype() const { return dtype_; }

 private:
  struct Compiled {
    Request request;
    std::shared_ptr<Plan> plan;
    Tensor ones, losses;  // training: the imposed gradient of the loss (ones) and its values (host)
    std::vector<std::pair<int, void*>> saved;  // (node, what its forward saved), in topological order
  };
  Request request(int64_t batch, bool train) const;
  void check(const std::vector<const void*>& inputs, int64_t batch) const;
  double mean_loss(const Tensor& losses, int64_t batch) const;
  Compiled& compiled(int64_t batch, bool train);
  void* array_of(int p) const;  // where array p's current values are
  size_t bytes_of(int p) const;
  void* buffer(size_t bytes);   // zeroed, on the trainer's device, freed with it
  void select_device() const;   // GPU: makes the trainer's device current on this thread

  Net& net_;
  int loss_;
  std::vector<int> arrays_;
  OptimMethod method_;
  kernels::OptimStep base_;
  DType dtype_;
  Device device_;
  int device_index_;
  int64_t steps_ = 0;
  std::vector<void*> grads_, state_;  // per array: its gradient; its optimiser state (state_count each)
  std::vector<void*> owned_;          // what buffer() allocated
  std::map<std::pair<int64_t, bool>, Compiled> compiled_;  // (batch, train) -> its request and plan
  Plan* current_ = nullptr;           // GPU: the plan whose device copies hold the arrays as trained
  Buffers buffers_;                   // a step's pointers (kept: their vectors' capacity is reused)
  std::vector<void*> node_params_;    // one layer's arrays, for its moving statistics
  std::vector<unsigned char> staging_;  // GPU: an array on its way to the host
};

}  // namespace portgrad
