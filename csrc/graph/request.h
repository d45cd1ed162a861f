/// @brief What an evaluation asks for, by name, as the Python binding and the C++ API take it,
/// resolved to engine indices in one place; the evaluation options (precision, device, mode)
/// validated here too, so every caller refuses a bad value with the same message.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "graph/net.h"

namespace portgrad {

struct EvaluationOptions {
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int device_index = 0;
  bool train = false;
};

// Each option as Python spells it (WorkingPrecision="Real64", TargetDevice=("GPU", 1),
// NetEvaluationMode="Train"). `shown` is the caller's spelling of the given value, for the message
// (a Python repr, so a value that is not a string is named as the user wrote it).
DType working_precision(const std::string& name, const std::string& shown);
// `index` < 0: none given (TargetDevice="GPU" means GPU 0).
std::pair<Device, int> target_device(const std::string& name, int64_t index, const std::string& shown);
bool evaluation_mode_is_train(const std::string& mode, const std::string& shown);

struct RequestNames {
  std::vector<std::string> outputs;      // output ports to return
  std::vector<std::string> input_grads;  // input ports whose gradient to return
  std::vector<std::string> array_grads;  // array paths ("0/Weights") whose gradient to return
  std::vector<char> per_example;         // parallel to array_grads (empty: none): wanted per example
  std::vector<std::string> imposed;      // output ports whose gradient the caller gives
  std::vector<std::pair<std::string, std::string>> probes;  // (layer path, port) of internal values
  std::vector<std::string> tangent_inputs;   // input ports whose tangent the caller imposes
  std::vector<std::string> tangent_arrays;   // array paths whose tangent the caller imposes
  std::vector<std::string> tangent_outputs;  // output ports whose tangent (the JVP) to return
  std::vector<std::string> grad_tangent_inputs;  // input ports whose gradient's tangent to return
  std::vector<std::string> grad_tangent_arrays;  // array paths whose gradient's tangent to return
};

// Names -> indices (Request's batch left at 1: the caller's input checker sets it).
Request resolve_request(const Net& net, const RequestNames& names, const EvaluationOptions& options);

// 'a', 'b' — how errors list port names.
std::string quoted_names(const std::vector<PortInfo>& ports);

}  // namespace portgrad
