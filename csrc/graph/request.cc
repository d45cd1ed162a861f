/// @brief Request resolution and option validation (graph/request.h).
#include "graph/request.h"

namespace portgrad {

DType working_precision(const std::string& name, const std::string& shown) {
  if (name == "Real32") return DType::F32;
  if (name == "Real64") return DType::F64;
  throw ValueError(cat("WorkingPrecision must be 'Real32' or 'Real64', given ", shown));
}

std::pair<Device, int> target_device(const std::string& name, int64_t index, const std::string& shown) {
  if (name != "CPU" && name != "GPU")
    throw ValueError(cat("TargetDevice must be 'CPU', 'GPU' or ('GPU', index), given ", shown));
  if (index < -1 || (name == "CPU" && index > 0) || index > INT32_MAX)
    throw ValueError(cat("TargetDevice ", shown, ": the index must be 0 for the CPU and a GPU index >= 0 for a GPU"));
  return {name == "GPU" ? Device::GPU : Device::CPU, index < 0 ? 0 : int(index)};
}

bool evaluation_mode_is_train(const std::string& mode, const std::string& shown) {
  if (mode == "Test") return false;
  if (mode == "Train") return true;
  throw ValueError(cat("NetEvaluationMode must be 'Test' or 'Train', given ", shown));
}

std::string quoted_names(const std::vector<PortInfo>& ports) {
  std::string s;
  for (const PortInfo& p : ports) s += cat(s.empty() ? "" : ", ", "'", p.name, "'");
  return s;
}

namespace {
int find_port(const std::vector<PortInfo>& ports, const std::string& name) {
  for (size_t k = 0; k < ports.size(); ++k)
    if (ports[k].name == name) return int(k);
  return -1;
}
}  // namespace

Request resolve_request(const Net& net, const RequestNames& names, const EvaluationOptions& options) {
  Request r;
  r.dtype = options.dtype;
  r.device = options.device;
  r.device_index = options.device_index;
  r.train = options.train;
  for (const std::string& name : names.outputs) {
    const int o = find_port(net.outputs(), name);
    if (o < 0)
      throw KeyError(cat("the net has no output port '", name, "'; its output ports are ", quoted_names(net.outputs()),
                         " (gradients are asked for with NetPortGradient)"));
    r.outputs.push_back(o);
  }
  for (const std::string& name : names.input_grads) {
    const int i = find_port(net.inputs(), name);
    if (i < 0)
      throw KeyError(cat("NetPortGradient('", name, "'): the net has no input port '", name, "' (inputs: ",
                         quoted_names(net.inputs()), ")"));
    if (net.values()[net.inputs()[i].value].index_bound > 0)
      throw ValueError(cat("port '", name, "' takes integer class indices and has no gradient"));
    r.input_grads.push_back(i);
  }
  for (const std::string& path : names.array_grads) {
    const int p = net.find_param(path);
    if (p < 0) {
      std::string have;
      for (const ParamInfo& info : net.params()) have += cat(have.empty() ? "" : ", ", info.path);
      throw KeyError(cat("NetPortGradient('", path, "'): the net has no array '", path, "'",
                         have.empty() ? std::string(" (it has no arrays)") : cat(" (arrays: ", have, ")")));
    }
    r.param_grads.push_back(p);
  }
  if (!names.per_example.empty()) {
    if (names.per_example.size() != names.array_grads.size())
      throw ValueError("per_example must have one flag per array gradient");
    r.per_example = names.per_example;
    for (size_t j = 0; j < r.param_grads.size(); ++j)
      for (size_t k = 0; k < j; ++k)
        if (r.param_grads[k] == r.param_grads[j] && r.per_example[k] != r.per_example[j])
          throw ValueError(cat("NetPortGradient('", names.array_grads[j], "'): asked for both summed and per example in "
                               "one request; ask in two"));
  }
  for (const std::string& name : names.imposed) {
    const int o = find_port(net.outputs(), name);
    if (o < 0)
      throw KeyError(cat("NetPortGradient('", name, "') as an input key imposes a gradient on an output port; the net's "
                         "output ports are ", quoted_names(net.outputs())));
    r.imposed.push_back(o);
  }
  for (const std::string& name : names.tangent_inputs) {
    const int i = find_port(net.inputs(), name);
    if (i < 0)
      throw KeyError(cat("NetPortTangent('", name, "') as an input key imposes a tangent on an input port (or an array); "
                         "the net's input ports are ", quoted_names(net.inputs())));
    if (net.values()[net.inputs()[i].value].index_bound > 0)
      throw ValueError(cat("NetPortTangent('", name, "'): port '", name, "' takes integer indices, which have no tangent"));
    r.tangent_inputs.push_back(i);
  }
  for (const std::string& path : names.tangent_arrays) {
    const int p = net.find_param(path);
    if (p < 0) throw KeyError(cat("NetPortTangent('", path, "'): the net has no array '", path, "'"));
    r.tangent_params.push_back(p);
  }
  for (const std::string& name : names.tangent_outputs) {
    const int o = find_port(net.outputs(), name);
    if (o < 0)
      throw KeyError(cat("NetPortTangent('", name, "'): the net has no output port '", name, "'; its output ports are ",
                         quoted_names(net.outputs()), " (a tangent is asked for on an output, imposed on an input)"));
    r.tangent_outputs.push_back(o);
  }
  for (const std::string& name : names.grad_tangent_inputs) {
    const int i = find_port(net.inputs(), name);
    if (i < 0)
      throw KeyError(cat("NetPortTangent(NetPortGradient('", name, "')): the net has no input port '", name, "' (inputs: ",
                         quoted_names(net.inputs()), ")"));
    if (net.values()[net.inputs()[i].value].index_bound > 0)
      throw ValueError(cat("port '", name, "' takes integer indices and has no gradient"));
    r.grad_tangent_inputs.push_back(i);
  }
  for (const std::string& path : names.grad_tangent_arrays) {
    const int p = net.find_param(path);
    if (p < 0) throw KeyError(cat("NetPortTangent(NetPortGradient('", path, "')): the net has no array '", path, "'"));
    if (!net.params()[p].differentiable)
      throw ValueError(cat("array \"", path, "\" is running state and has no gradient"));
    r.grad_tangent_params.push_back(p);
  }
  for (const auto& [path, port] : names.probes) {
    const int v = net.find_value(path, port);
    if (v < 0) throw KeyError(cat("NetPort: the net has no layer \"", path, "\" with a port \"", port, "\""));
    r.probes.push_back(v);
  }
  return r;
}

}  // namespace portgrad
