/// @brief The exceptions portgrad throws, shared by the engine, the Python binding and the public C++ API.
///
/// Each maps to the Python exception of the same name, with the same message.
#pragma once
#include <stdexcept>
#include <string>

namespace portgrad {

// Bad value or shape given by the caller, or a malformed file -> Python ValueError.
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
// Wrong kind of argument (dtype, type) -> Python TypeError.
struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
// Position or index out of range -> Python IndexError.
struct IndexError : std::runtime_error { using std::runtime_error::runtime_error; };
// Unknown port or parameter name -> Python KeyError.
struct KeyError : std::runtime_error { using std::runtime_error::runtime_error; };
// A file could not be opened, read or written -> Python OSError (FileNotFoundError, PermissionError, ...).
struct OSError : std::runtime_error {
  OSError(int error_number, const std::string& message, const std::string& path)
      : std::runtime_error(message), errnum(error_number), filename(path) {}
  int errnum;            // the errno value
  std::string filename;  // the file concerned
};

}  // namespace portgrad
