/// @brief Input checks shared by the Python binding and the C++ API (graph/inputs.h).
#include "graph/inputs.h"

#include <algorithm>
#include <cmath>

namespace portgrad {

int64_t port_batch(const Shape& given, const Shape& port, const std::string& port_name, const char* kind) {
  const size_t nd = given.size();
  if (given == port) return -1;
  if (nd == port.size() + 1 && std::equal(port.begin(), port.end(), given.begin() + 1)) return given[0];
  std::string batched = shape_str(shape_concat({0}, port));
  batched.replace(1, 1, "n");
  throw ValueError(cat("port \"", port_name, "\": expected an array of shape ", shape_str(port), " (one example) or ",
                       batched, " (a batch), given ", kind, "shape ", shape_str(given)));
}

void check_batches_agree(const std::string& first, int64_t first_batch, const std::string& port, int64_t batch) {
  if (batch == first_batch) return;
  auto say = [](int64_t n) { return n < 0 ? std::string("one example") : cat("a batch of ", n); };
  throw ValueError(cat("ports \"", first, "\" and \"", port, "\" disagree: ", say(first_batch), " vs ", say(batch)));
}

void check_imposed_shape(const std::string& output, const Shape& output_shape, int64_t batch, const Shape& given) {
  const Shape want = batch >= 0 ? shape_concat({batch}, output_shape) : output_shape;
  if (given != want)
    throw ValueError(cat("the gradient imposed on output \"", output, "\": expected shape ", shape_str(want),
                         " (the output's shape), given shape ", shape_str(given)));
}

int64_t float_index(const Net& net, int input, double v) {
  const std::string& port = net.inputs()[input].name;
  if (!(std::isfinite(v) && v == std::floor(v)))
    throw ValueError(cat("port \"", port, "\" takes 0-based class indices (integers); given the value ", v));
  if (v < 0 || v >= double(net.values()[net.inputs()[input].value].index_bound))
    throw net.index_out_of_range(input, cat(v));
  return int64_t(v);
}

}  // namespace portgrad
