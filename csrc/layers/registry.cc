/// @brief The list of layer types, and helpers for reading their options from a spec.
#include <algorithm>
#include <cmath>

#include "layers/layer.h"

namespace portgrad {

// One factory per layer family; each lives in that family's file.
#define PORTGRAD_LAYER(type, family) std::unique_ptr<Layer> make_##family##_layer(const json::Value&, const std::string&);
#include "layers/layers.def"
#undef PORTGRAD_LAYER

std::vector<std::string> layer_types() {
  return {
#define PORTGRAD_LAYER(type, family) #type,
#include "layers/layers.def"
#undef PORTGRAD_LAYER
  };
}

std::unique_ptr<Layer> make_layer(const json::Value& s, const std::string& where) {
  using Factory = std::unique_ptr<Layer> (*)(const json::Value&, const std::string&);
  static const struct { const char* type; Factory make; } table[] = {
#define PORTGRAD_LAYER(type, family) {#type, make_##family##_layer},
#include "layers/layers.def"
#undef PORTGRAD_LAYER
  };
  const std::string type = spec::string(s, "type", where);
  for (const auto& entry : table) {
    if (type != entry.type) continue;
    // Every key of the spec must be an option the factory read (or the type and the declared
    // input shapes): a misspelt option ("stide") is an error, not silently the default.
    std::vector<std::string> read{"type", "inputs", "shared"};  // "shared": graph/net.cc reads it
    spec::Reads reads(&read);
    std::unique_ptr<Layer> layer = entry.make(s, where);
    if (s.kind == json::Value::Kind::Object)
      for (const auto& [key, _] : s.object)
        if (std::find(read.begin(), read.end(), key) == read.end()) {
          std::string known;
          for (size_t k = 3; k < read.size(); ++k)
            if (known.find(cat("\"", read[k], "\"")) == std::string::npos)
              known += cat(known.empty() ? "" : ", ", "\"", read[k], "\"");
          throw ValueError(cat(where, ": unknown option \"", key, "\" for ", type,
                               known.empty() ? std::string(" (it takes no options)") : cat("; its options are ", known)));
        }
    return layer;
  }
  std::string known;
  for (const auto& entry : table) known += cat(known.empty() ? "" : ", ", entry.type);
  throw ValueError(cat(where, ": unknown layer type \"", type, "\"; known types: ", known));
}

namespace spec {

namespace {
thread_local std::vector<std::string>* reads = nullptr;
}
Reads::Reads(std::vector<std::string>* into) : saved_(reads) { reads = into; }
Reads::~Reads() { reads = saved_; }

const json::Value* get(const json::Value& s, const char* key) {
  if (reads) reads->push_back(key);
  const json::Value* v = s.find(key);
  return (v && !v->is_null()) ? v : nullptr;
}

std::string string(const json::Value& s, const char* key, const std::string& where,
                   const char* fallback) {
  const json::Value* v = get(s, key);
  if (!v) {
    if (fallback) return fallback;
    throw ValueError(cat(where, ": missing option \"", key, "\""));
  }
  if (v->kind != json::Value::Kind::String)
    throw ValueError(cat(where, ": option \"", key, "\" must be a string"));
  return v->string;
}

bool boolean(const json::Value& s, const char* key, const std::string& where, bool fallback) {
  const json::Value* v = get(s, key);
  if (!v) return fallback;
  if (v->kind != json::Value::Kind::Bool)
    throw ValueError(cat(where, ": option \"", key, "\" must be true or false"));
  return v->boolean;
}

int64_t integer(const json::Value& v, const std::string& what) {
  if (v.kind != json::Value::Kind::Number || v.number != std::floor(v.number))
    throw ValueError(cat(what, " must be an integer"));
  if (std::fabs(v.number) > 9.0e15)  // past what a double holds exactly, and far past any real size
    throw ValueError(cat(what, " is too large (", v.number, "); sizes must be below 9e15"));
  return static_cast<int64_t>(v.number);
}

Shape shape(const json::Value& v, const std::string& what, bool allow_auto) {
  if (v.kind != json::Value::Kind::Array)
    throw ValueError(cat(what, " must be a list of dimensions"));
  if (v.array.size() > 16) throw ValueError(cat(what, ": more than 16 dimensions"));
  Shape s;
  int autos = 0;
  for (const auto& d : v.array) {
    int64_t n = integer(d, what);
    if (n == -1 && allow_auto) {
      if (++autos > 1) throw ValueError(cat(what, ": at most one dimension may be automatic"));
    } else if (n < 1 || n > (int64_t(1) << 40)) {
      throw ValueError(cat(what, ": dimension ", n, " is not a positive size"));
    }
    s.push_back(n);
  }
  // Bound the element count so that no later size computation can overflow.
  double total = 1;
  for (int64_t d : s) total *= double(d > 0 ? d : 1);
  if (total > double(int64_t(1) << 40)) throw ValueError(cat(what, ": more than 2^40 elements"));
  return s;
}

}  // namespace spec
}  // namespace portgrad
