// Loads a net saved from Python, evaluates a batch, and prints outputs, gradients (input, imposed,
// array, per example) and forward-mode results (a Jacobian-vector product, the Jacobian).
//
//   portgrad_example model.pgnet [batch]
//   portgrad_example_gpu model.pgnet [batch [gpu]]   (the same on a GPU, 0 by default: built with
//                                                     PORTGRAD_EXAMPLE_GPU, linked with portgrad::cuda)
//
// The batch is x[b][j] = ((b * n + j) % 17) / 8 - 1 (exact in binary, so Python can rebuild it).
// Numbers are printed as hexadecimal floats (%a): exact, so a test can compare them bit for bit.
#include <portgrad/portgrad.h>
#if defined(PORTGRAD_EXAMPLE_GPU)
#include <portgrad/gpu.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#if defined(PORTGRAD_EXAMPLE_GPU)
static int gpu_index = 0;
#endif

template <typename T>
void print(const char* what, const portgrad::Array<T>& a) {
  std::printf("%s", what);
  for (int64_t d : a.shape) std::printf(" %lld", static_cast<long long>(d));
  std::printf(" :");
  for (T v : a.values) std::printf(" %a", static_cast<double>(v));
  std::printf("\n");
}

// A Query runs where it says: this example's evaluations all run where `net` does.
portgrad::Query on_device(const portgrad::Net& net, portgrad::Query q) {
#if defined(PORTGRAD_EXAMPLE_GPU)
  q.device = portgrad::Device::GPU;
  q.device_index = gpu_index;
#endif
  (void)net;
  return q;
}

template <typename T>
void run(const portgrad::Net& net, int64_t batch, const char* tag) {
  const portgrad::Port& in = net.inputs().at(0);
  portgrad::Array<T> x;
  x.shape = {batch};
  x.shape.insert(x.shape.end(), in.shape.begin(), in.shape.end());
  int64_t n = 1;
  for (int64_t d : in.shape) n *= d;
  for (int64_t k = 0; k < batch * n; ++k) x.values.push_back(T((k % 17) / 8.0 - 1.0));

  portgrad::Inputs<T> inputs{{in.name, x}};
  print((std::string(tag) + " output").c_str(), net.output<T>(inputs));
  print((std::string(tag) + " input_gradient").c_str(), net.input_gradient<T>(inputs, in.name));
  // An imposed output gradient (a vector-Jacobian product) and an array gradient.
  const portgrad::Port& out = net.outputs().at(0);
  portgrad::Array<T> g{{batch}, {}};
  g.shape.insert(g.shape.end(), out.shape.begin(), out.shape.end());
  int64_t m = 1;
  for (int64_t d : out.shape) m *= d;
  for (int64_t k = 0; k < batch * m; ++k) g.values.push_back(T((k % 5) - 2));
  print((std::string(tag) + " vjp").c_str(), net.input_gradient<T>(inputs, in.name, {{out.name, g}}));
  if (!net.arrays().empty()) {
    const std::string path = net.arrays().front().path;
    print((std::string(tag) + " array_gradient " + path).c_str(), net.array_gradient<T>(inputs, path));
    // Each example's own gradient of that array (NetPortGradient(path, PerExample=True)).
    portgrad::Query q;
    q.array_gradients_per_example = {path};
    print((std::string(tag) + " per_example " + path).c_str(),
          net.evaluate<T>(on_device(net, q), inputs).array_gradients_per_example[0]);
  }
  // Forward mode: the Jacobian-vector product J v along v[b][j] = ((b + 2 j) % 7) / 4 - 0.75, and
  // the whole Jacobian.
  portgrad::Array<T> v{x.shape, {}};
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) v.values.push_back(T(((b + 2 * j) % 7) / 4.0 - 0.75));
  portgrad::Query q;
  q.tangent_inputs = {in.name};
  q.tangent_outputs = {out.name};
  print((std::string(tag) + " jvp").c_str(), net.evaluate<T>(on_device(net, q), inputs, {}, {{in.name, v}}).output_tangents[0]);
  print((std::string(tag) + " jacobian").c_str(), net.jacobian<T>(inputs, in.name));
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s model.pgnet [batch]\n", argv[0]);
    return 2;
  }
  try {
    portgrad::Net net = portgrad::Net::load(argv[1]);
    const int64_t batch = argc > 2 ? std::atoll(argv[2]) : 4;
    std::printf("portgrad %s\n", portgrad::version());
#if defined(PORTGRAD_EXAMPLE_GPU)
    std::string why;
    if (portgrad::enable_gpu(&why) == 0) {
      std::printf("error: no GPU: %s\n", why.c_str());
      return 1;
    }
    gpu_index = argc > 3 ? std::atoi(argv[3]) : 0;
    net = net.on(portgrad::Device::GPU, gpu_index);  // every evaluation below runs there
#endif
    run<float>(net, batch, "f32");
    run<double>(net, batch, "f64");
  } catch (const std::exception& e) {  // portgrad::ValueError, OSError, ...: the message Python shows
    std::printf("error: %s\n", e.what());
    return 1;
  }
  return 0;
}
