/// @brief The checks of an evaluation's arrays that every caller makes before the engine runs
/// (the Python binding for NumPy and GPU arrays, the C++ API for its Arrays), in one place so
/// that each mistake is said the same way wherever it is made.
#pragma once
#include <string>

#include "graph/net.h"

namespace portgrad {

// One example has exactly the port's shape, a batch one more leading axis: the batch size, or -1
// for one example. `kind` names what was given ("" or "a GPU array of ").
int64_t port_batch(const Shape& given, const Shape& port, const std::string& port_name, const char* kind = "");

// Every input port gives one example, or all give batches of one size. Called per port after the
// first, with the first's name and batch.
void check_batches_agree(const std::string& first, int64_t first_batch, const std::string& port, int64_t batch);

// An imposed output gradient has the output's shape (with the batch axis when batched: batch >= 0).
void check_imposed_shape(const std::string& output, const Shape& output_shape, int64_t batch, const Shape& given);

// A class index given as a float to index input port `input`: an integer in [0, bound) (checked
// before the cast to int64, which could overflow).
int64_t float_index(const Net& net, int input, double v);

}  // namespace portgrad
