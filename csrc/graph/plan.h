/// @brief Plan: the compiled schedule of one request on one Net; owns every buffer it needs.
#pragma once
#include <mutex>
#include <string>
#include <vector>

#include "graph/net.h"
#include "graph/passes.h"
#include "kernels/mlp.h"
#include "ops/gpu_backend.h"

namespace portgrad {

class Plan {
 public:
  Plan(Net& net, const Request& r);
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  // Runs the schedule; the caller holds mutex(). Allocates nothing.
  void run(const Buffers& b);
  std::mutex& mutex() { return mu_; }
  // The memory it holds (its arena and workspace, on the host or the device).
  size_t bytes() const { return bytes_; }
  // The schedule in words, one line a step: "forward 0 (LinearLayer)", "backward 0 (LinearLayer): dWeights".
  std::vector<std::string> describe() const;
  // Training: what node n's forward step saved for its backward (null if none), and the prepared
  // copies of the arrays (packed weights) made again after the arrays changed in place.
  void* forward_saved(int node) const;
  void refresh_prepared();
  // Where this plan's steps read array p (a GPU plan's device copy), or null if none reads it.
  void* array_data(int p) const;

 private:
  struct LayerStep {
    int node;
    bool backward;
    bool tangent = false;  // a forward-mode (jvp) step
    bool grad_tangent = false;  // a second-order step (jvp_backward): `backward` is set too
    std::vector<const void*> tdout;
    std::vector<char> per_example;  // backward: per array slot, its gradient per example
    std::vector<const void*> in, param, dout, tin, tparam;
    std::vector<void*> out, din, dparam, tout;
    std::vector<size_t> tin_stride, tout_stride;  // tangent steps: bytes from one direction's block to the next
    void* saved = nullptr;
    void* prepared = nullptr;
    // The elementwise function of the (skipped) next layer. Forward: applied in this layer's
    // epilogue and written to `activated`. Backward: dout is the gradient of `activated`, and the
    // layer folds f'(out) into its own backward (backward_activated).
    kernels::UnaryFn fused = kernels::UnaryFn::Count;
    void* activated = nullptr;
  };
  struct Step {
    enum Kind { Layer, Fill, CopyImposed, Axpy, CopyOutput, CopyInputGrad, CopyParamGrad, CopyProbe,
                CopyProbeInput, FusedMlp, CopyInputTangent, CopyParamTangent, CopyOutputTangent,
                CopyInputGradTangent, CopyParamGradTangent } kind;
    int layer_step = -1;   // Layer
    void* dst = nullptr;   // Fill, CopyImposed, Axpy
    const void* src = nullptr;  // Axpy, Copy*
    int64_t n = 0;         // elements
    double value = 0;      // Fill
    int slot = 0;          // CopyImposed / Copy*: index into the Buffers list (imposed, or a tangent list)
    int input = 0;         // CopyProbeInput: which net input
    bool direct = false;   // a result copy skipped in this call: its layer step wrote the caller's buffer
  };
  // Where net input i is referenced by layer steps (patched with the caller's pointer per call).
  struct InputUse {
    int layer_step, slot, input;
  };

  // A result that one layer step writes and no other step touches (a weight gradient per example,
  // the gradient of an input with one user): on the CPU that step writes the caller's buffer itself
  // and the copy is skipped, unless the buffer overlaps memory the call reads (then it is copied).
  struct DirectResult {
    int step;        // the result's copy in steps_
    int layer_step;  // its writer
    int list;        // the writer's pointer: 0 din, 1 dparam, 2 tout
    int slot;
  };

  // --- Building: the passes' results (graph/passes.h) become memory and steps.
  void build();
  void release_device();
  void refuse_unsupported(const passes::Work& work) const;
  void allocate(const passes::Layout& layout);
  void emit_forward(const passes::Work& work, const passes::Fusion& fusion, const passes::Layout& layout);
  void emit_backward(const passes::Work& work, const passes::Fusion& fusion, const passes::Layout& layout,
                     const std::vector<passes::Contribution>& contributions);
  void emit_tangents(const passes::Work& work, const passes::Fusion& fusion, const passes::Layout& layout);
  void emit_grad_tangents(const passes::Work& work, const passes::Layout& layout,
                          const std::vector<passes::Contribution>& contributions);
  void emit_results(const passes::Work& work, const passes::Layout& layout);
  void find_direct_results();
  void point_direct_results(const Buffers& b);
  bool overlaps_what_is_read(const Buffers& b, const void* dst, size_t bytes) const;
  void wire_contributions(int id, const std::vector<passes::Contribution>& contributions, size_t& c,
                          const std::vector<size_t>& grad, const std::vector<size_t>& array_grad,
                          const passes::Work& work, bool tangents, std::vector<char>& initialised);
  int add_layer_step(int node, bool backward, const passes::Layout& layout, const passes::Work& work);
  void add_fill(void* dst, int64_t n, double value);
  void* at(size_t offset) const;  // an arena offset as a pointer (null for passes::kNone)
  void* array_ptr(int p) const;   // the net's array p as this plan's steps read it
  int input_index(int value) const;
  int64_t numel(int value) const;  // elements of a value over the batch
  int64_t array_grad_numel(int p, const passes::Work& work) const;  // x batch where per example

  Net& net_;
  Request req_;
  Tensor arena_;
  char* base_ = nullptr;  // the arena, on the plan's device
  size_t workspace_bytes_ = 0;
  void* workspace_ = nullptr;
  std::vector<LayerStep> layer_steps_;
  std::vector<Step> steps_;
  std::vector<InputUse> input_uses_;
  std::vector<DirectResult> direct_results_;
  std::mutex mu_;
  size_t bytes_ = 0;

  // --- With PORTGRAD_FUSED_MLP=1, a GPU plan of a whole small MLP (a chain of LinearLayers and
  // elementwise functions) is one fused kernel (kernels/mlp.h) instead of a step per layer; false
  // where the net or request is not of that kind (or the fusion is off), and nothing is built then.
  bool build_fused_mlp();
  kernels::MlpArgs<float> mlp_f32_;
  kernels::MlpArgs<double> mlp_f64_;

  // --- GPU plans: the arena (with copies of the net's arrays and of the inputs) lives on the
  // device; the compute steps are captured once into a CUDA graph and replayed.
  void run_steps(const Buffers& b, bool compute_only);
  void jvp_directions(const Layer& layer, const LayerStep& ls, LayerArgs& a) const;
  static void* result_dst(const Step& st, const Buffers& b);
  static const void* imposed_src(const Step& st, const Buffers& b);
  void run_gpu(const Buffers& b);
  void upload_params();
  const GpuBackend* gpu_ = nullptr;
  void* device_arena_ = nullptr;
  std::vector<std::pair<int, void*>> device_params_;  // (param index, device copy)
  std::vector<void*> staged_inputs_;                  // per net input: its device copy, or null
  std::vector<size_t> input_bytes_;
  void* graph_ = nullptr;
  bool graph_failed_ = false;
  int runs_ = 0;
};

}  // namespace portgrad
