// 8 std::threads evaluate one loaded net on different inputs, into caller-owned buffers, and must
// get what sequential evaluation gets, bit for bit; so must an evaluation that writes the input
// gradient over its own input.   portgrad_threads model.pgnet
#include <portgrad/portgrad.h>

#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const portgrad::Net net = portgrad::Net::load(argv[1]);
  const portgrad::Port& in = net.inputs().at(0);
  const portgrad::Port& out = net.outputs().at(0);
  int64_t n = 1, m = 1;
  for (int64_t d : in.shape) n *= d;
  for (int64_t d : out.shape) m *= d;
  portgrad::Query q;
  q.outputs = {out.name};
  q.input_gradients = {in.name};
  for (const auto& a : net.arrays()) q.array_gradients.push_back(a.path);
  const int kThreads = 8;

  struct Slot {
    int64_t batch;
    std::vector<double> x, y, dx;
    std::vector<std::vector<double>> dw;
  };
  auto fresh = [&](int t) {
    Slot s;
    s.batch = 3 + t;  // different batch sizes: different plans run in parallel
    for (int64_t k = 0; k < s.batch * n; ++k) s.x.push_back(((k * (t + 3)) % 23) / 16.0 - 0.7);
    s.y.assign(size_t(s.batch * m), 0);
    s.dx.assign(s.x.size(), 0);
    for (const auto& a : net.arrays()) {
      int64_t c = 1;
      for (int64_t d : a.shape) c *= d;
      s.dw.emplace_back(size_t(c), 0);
    }
    return s;
  };
  auto eval = [&](Slot& s) {
    portgrad::Buffers<double> b;
    b.inputs = {s.x.data()};
    b.outputs = {s.y.data()};
    b.input_gradients = {s.dx.data()};
    for (auto& w : s.dw) b.array_gradients.push_back(w.data());
    net.evaluate<double>(q, s.batch, b);
  };
  std::vector<Slot> want;
  for (int t = 0; t < kThreads; ++t) {
    want.push_back(fresh(t));
    eval(want.back());
  }
  std::vector<int> bad(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 200; ++round) {
        Slot s = fresh(t);
        eval(s);
        const Slot& w = want[t];
        bool same = s.y == w.y && s.dx == w.dx && s.dw == w.dw;
        // Also the same bits (== would let -0.0 equal 0.0).
        same = same && std::memcmp(s.y.data(), w.y.data(), s.y.size() * sizeof(double)) == 0;
        if (!same) ++bad[t];
      }
    });
  for (auto& th : threads) th.join();
  int total = 0;
  for (int b : bad) total += b;
  std::printf("threads %d rounds %d mismatches %d\n", kThreads, 200, total);
  // In place: the input's buffer receives its gradient. The engine reads the input while it runs,
  // so it must not write results there before the end.
  Slot s = fresh(0);
  portgrad::Buffers<double> b;
  b.inputs = {s.x.data()};
  b.outputs = {s.y.data()};
  b.input_gradients = {s.x.data()};
  for (auto& w : s.dw) b.array_gradients.push_back(w.data());
  net.evaluate<double>(q, s.batch, b);
  const bool in_place = s.x == want[0].dx && s.dw == want[0].dw && s.y == want[0].y;
  std::printf("in place %s\n", in_place ? "same" : "different");
  return total == 0 && in_place ? 0 : 1;
}
