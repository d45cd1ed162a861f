/// @brief The exception types of the public boundary; the Python binding maps each to its Python twin.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

#include "portgrad/errors.h"  // ValueError, TypeError, IndexError, KeyError, OSError

namespace portgrad {

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace portgrad
