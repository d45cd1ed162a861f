/// @brief libFuzzer harness of the file loader: any bytes must load or raise a portgrad error,
/// never crash, read out of bounds, allocate hugely or hang. Loaded nets are also evaluated once.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "portgrad/portgrad.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    portgrad::Net net = portgrad::Net::load_bytes(data, size);
    // A net that loads must evaluate: one example of ones, outputs and every gradient.
    portgrad::Inputs<double> in;
    for (const portgrad::Port& p : net.inputs()) {
      double n = 1;
      for (int64_t d : p.shape) n *= double(d);
      if (n > 1 << 16) return 0;  // keep each run fast
      portgrad::Array<double> a{p.shape, std::vector<double>(size_t(n), p.class_indices ? 0.0 : 0.5)};
      in.emplace(p.name, std::move(a));
    }
    portgrad::Query q;
    for (const portgrad::Port& p : net.outputs()) q.outputs.push_back(p.name);
    for (const portgrad::Port& p : net.inputs())
      if (!p.class_indices) q.input_gradients.push_back(p.name);
    for (const portgrad::ArrayInfo& a : net.arrays()) q.array_gradients.push_back(a.path);
    (void)net.evaluate<double>(q, in);
  } catch (const portgrad::ValueError&) {
  } catch (const portgrad::TypeError&) {
  } catch (const portgrad::IndexError&) {
  } catch (const portgrad::KeyError&) {
  }
  return 0;
}
