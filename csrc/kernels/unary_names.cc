/// @brief Names of the elementwise functions (Wolfram's, plus common aliases).
#include <cstring>

#include "kernels/unary.h"

namespace portgrad::kernels {

const char* unary_name(UnaryFn f) {
  switch (f) {
#define X(name, str) case UnaryFn::name: return str;
#include "kernels/unary.def"
#undef X
    case UnaryFn::Count: break;
  }
  return "?";
}

bool unary_from_name(const std::string& name, UnaryFn* out) {
  static const struct { const char* alias; UnaryFn f; } aliases[] = {
      {"ReLU", UnaryFn::Ramp},
      {"RectifiedLinearUnit", UnaryFn::Ramp},
      {"Sigmoid", UnaryFn::LogisticSigmoid},
      {"ExponentialLinearUnit", UnaryFn::ELU},
      {"ScaledExponentialLinearUnit", UnaryFn::SELU},
      {"GaussianErrorLinearUnit", UnaryFn::GELU},
  };
  for (int i = 0; i < static_cast<int>(UnaryFn::Count); ++i) {
    if (name == unary_name(static_cast<UnaryFn>(i))) {
      *out = static_cast<UnaryFn>(i);
      return true;
    }
  }
  for (const auto& a : aliases) {
    if (name == a.alias) {
      *out = a.f;
      return true;
    }
  }
  return false;
}

}  // namespace portgrad::kernels
