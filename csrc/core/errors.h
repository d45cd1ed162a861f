/// @brief The exception types of the public boundary; the Python binding maps each to its Python twin.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace portgrad {

// Bad value or shape given by the caller -> Python ValueError.
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
// Wrong kind of argument (dtype, type) -> Python TypeError.
struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
// Position or index out of range -> Python IndexError.
struct IndexError : std::runtime_error { using std::runtime_error::runtime_error; };
// Unknown port or parameter name -> Python KeyError.
struct KeyError : std::runtime_error { using std::runtime_error::runtime_error; };

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace portgrad
