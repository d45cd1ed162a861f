/// @brief The passes that compile a request into a plan, each a pure function of the net, the
/// request and the results of the passes before it (so each can be run and tested alone:
/// Net.plan_passes in Python shows them). Plan (graph/plan.cc) runs them in this order, then
/// allocates the arena and emits the steps:
///   1. select_work       which nodes run forward and which backward, which values need gradients
///   2. fuse_activations  Linear + elementwise pairs computed in one step, forward and backward
///   3. lay_out_arena     byte offsets of every value, gradient, saved and prepared buffer
///   4. plan_accumulation where a gradient's second and later contributions are summed
///   5. stage_on_device   (GPU plans) device copies of the net's arrays and of its inputs
/// Forward mode (tangents, the JVP) is part of select_work and lay_out_arena, and has its own
/// step emitter (Plan::emit_tangents).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "graph/net.h"

namespace portgrad::passes {

constexpr size_t kNone = SIZE_MAX;  // no buffer

// 1. Only what the request needs: an output alone runs no backward; an input gradient alone
// computes no array gradient; a node whose inputs depend on no requested input or array gets no
// backward step.
struct Work {
  bool any_grad = false;
  std::vector<char> run_forward;      // per node
  std::vector<char> run_backward;     // per node
  std::vector<char> reaches_seed;     // per node: an ancestor of an output the gradient flows from
  std::vector<char> needs_grad;       // per value: depends on a requested input or array
  std::vector<char> array_requested;  // per array (Net::params)
  std::vector<char> array_per_example;  // per array: its gradient is wanted per example
  // Forward mode: nodes whose tangent step runs (a tangent reaches one of their inputs or arrays,
  // and they lead to a requested output tangent), and values that carry a non-zero tangent.
  bool any_tangent = false;
  bool any_grad_tangent = false;      // second order: the backward steps' tangents run too
  std::vector<char> run_tangent;      // per node
  std::vector<char> has_tangent;      // per value
};
Work select_work(const Net& net, const Request& r);

// 2. A node whose only consumer is an elementwise function applies it in its own epilogue, and
// the elementwise node's forward step is skipped (the pre-activation is still kept when a backward
// pass needs it). Where both run backward and the producer can fold f' into its own backward, the
// elementwise node's backward step is skipped too: the producer reads the gradient of the activated
// value, and the pre-activation's gradient gets no buffer. Likewise in forward mode: where both run
// a tangent step and the producer can fold f' into its own (can_jvp_activated), the producer writes
// the activated value's tangent and the pre-activation's tangent gets no buffer. (Not with tangents
// of gradients: their steps read every value's tangent and gradient.)
struct Fusion {
  std::vector<int> fused_into;       // per node: the node that computes this elementwise one, or -1
  std::vector<char> backward_fused;  // per node: an elementwise node whose backward its producer does
  std::vector<char> tangent_fused;   // per node: an elementwise node whose tangent its producer writes
  // Whether value v is the pre-activation of a backward-fused pair (and so has no gradient buffer).
  bool unbuffered_gradient(const Net& net, int v) const;
  // Whether value v is the pre-activation of a tangent-fused pair (and so has no tangent buffer).
  bool unbuffered_tangent(const Net& net, int v) const;
};
Fusion fuse_activations(const Net& net, const Request& r, const Work& w);

// 3-5. The arena: one block of memory, every buffer at a 64-byte aligned offset (kNone: none).
struct Layout {
  std::vector<size_t> value, grad;         // per value: its forward values, its gradient
  std::vector<size_t> array_grad;          // per array: its (batch-summed) gradient
  std::vector<size_t> tangent;             // per value: its tangent (zeros where none flows)
  std::vector<size_t> array_tangent;       // per array: the tangent imposed on it
  std::vector<size_t> grad_tangent;        // per value: the tangent of its gradient (second order)
  std::vector<size_t> array_grad_tangent;  // per array: the tangent of its gradient
  std::vector<size_t> saved, prepared;     // per node
  std::vector<size_t> device_array;        // per array: its device copy (GPU plans)
  std::vector<size_t> device_input;        // per net input: its staged device copy (GPU plans)
  std::vector<size_t> input_bytes;         // per net input: bytes of a staged copy (GPU plans)
  size_t arena_bytes = 0;                  // everything above
  size_t workspace_bytes = 0;              // scratch after the arena, shared by all steps
  size_t take(size_t bytes);               // reserves bytes at the end of the arena
};
Layout lay_out_arena(const Net& net, const Request& r, const Work& w, const Fusion& f);

// 4. Gradient accumulation: the first contribution to a value's gradient writes it; later ones
// go to a scratch buffer (taken from the arena) and are added. Seeds count as the first
// contribution. So with a shared array's gradient: each layer that uses it contributes. Listed in
// the order the backward steps run (nodes in reverse topological order).
struct Contribution {
  int node, slot;  // the backward step of node writes the gradient of its input (or array) `slot`...
  size_t scratch;  // ... here, to be added to the value's (array's) gradient; kNone: straight into it
  bool array;      // slot indexes the node's arrays (NodeInfo::params), not its inputs
};
std::vector<Contribution> plan_accumulation(const Net& net, const Request& r, const Work& w, const Fusion& f,
                                            Layout& layout);

// 5. A GPU plan also holds device copies of the net's arrays and of its inputs.
void stage_on_device(const Net& net, const Request& r, Layout& layout);

}  // namespace portgrad::passes
