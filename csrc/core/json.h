/// @brief A small, strict JSON reader for net specs and file headers: bounded
/// nesting depth, full string escapes, and errors that give the byte offset.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace portgrad::json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in file order; duplicate keys rejected

  bool is_null() const { return kind == Kind::Null; }
  const Value* find(const std::string& key) const;   // object member or nullptr
};

// Throws ValueError("<what> is not valid JSON at byte N: ..."). `max_values` bounds how many values
// (of any kind) the text may hold, so that a hostile text cannot make the tree huge.
Value parse(const std::string& text, int max_depth = 64, size_t max_values = SIZE_MAX,
            const char* what = "spec");

}  // namespace portgrad::json
