/// @brief A strict recursive-descent JSON parser (RFC 8259) with a nesting limit.
#include "core/json.h"

#include <cmath>
#include <cstdlib>
#include <unordered_set>

#include "core/errors.h"

namespace portgrad::json {
namespace {

struct Parser {
  const std::string& s;
  size_t i = 0;
  int max_depth;
  size_t max_values;
  const char* what_;
  size_t values = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw ValueError(cat(what_, " is not valid JSON at byte ", i, ": ", what));
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) { ++i; return true; }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(cat("expected '", c, "'"));
  }
  void literal(const char* word) {
    for (const char* p = word; *p; ++p, ++i)
      if (i >= s.size() || s[i] != *p) fail(cat("expected '", word, "'"));
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }
  // Checks that the raw bytes of a string are well-formed UTF-8 (lead byte, then continuations).
  void check_utf8(size_t from, size_t to) const {
    for (size_t k = from; k < to;) {
      unsigned char c = s[k];
      int extra = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
      bool ok = extra >= 0 && k + extra < to;
      for (int e = 1; ok && e <= extra; ++e) ok = (static_cast<unsigned char>(s[k + e]) >> 6) == 2;
      if (!ok) throw ValueError(cat(what_, " is not valid JSON at byte ", k, ": invalid UTF-8"));
      k += extra + 1;
    }
  }
  std::string str() {
    expect('"');
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i];
      if (c == '"') { ++i; break; }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        size_t start = i;
        while (i < s.size() && s[i] != '"' && s[i] != '\\' && static_cast<unsigned char>(s[i]) >= 0x20) ++i;
        check_utf8(start, i);
        out.append(s, start, i - start);
        continue;
      }
      ++i;
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (i + 2 > s.size() || s[i] != '\\' || s[i + 1] != 'u') fail("unpaired surrogate");
            i += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("unpaired surrogate");
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
    return out;
  }
  double num() {
    size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    if (i >= s.size() || !(s[i] >= '0' && s[i] <= '9')) fail("bad number");
    if (s[i] == '0') ++i;
    else while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i < s.size() && s[i] == '.') {
      ++i;
      if (i >= s.size() || !(s[i] >= '0' && s[i] <= '9')) fail("bad number");
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      if (i >= s.size() || !(s[i] >= '0' && s[i] <= '9')) fail("bad number");
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    }
    std::string text(s, start, i - start);
    double v = std::strtod(text.c_str(), nullptr);
    if (!std::isfinite(v)) fail("number out of range");
    return v;
  }
  Value value(int depth) {
    if (depth > max_depth)  // valid JSON, but past what portgrad reads: say so, not "invalid"
      throw ValueError(cat(what_, " nests deeper than portgrad reads (", max_depth, " levels; at byte ", i,
                           "): a net nested that deep is not supported"));
    if (++values > max_values) fail(cat("more than ", max_values, " values"));
    ws();
    if (i >= s.size()) fail("unexpected end");
    Value v;
    char c = s[i];
    if (c == '{') {
      ++i;
      v.kind = Value::Kind::Object;
      if (eat('}')) return v;
      std::unordered_set<std::string> seen;  // used past a few keys, so big objects stay linear
      do {
        ws();
        std::string key = str();
        bool dup = false;
        if (v.object.size() < 8) {
          for (const auto& kv : v.object) dup = dup || kv.first == key;
        } else {
          if (seen.empty())
            for (const auto& kv : v.object) seen.insert(kv.first);
          dup = !seen.insert(key).second;
        }
        if (dup) fail(cat("duplicate key \"", key, "\""));
        expect(':');
        v.object.emplace_back(std::move(key), value(depth + 1));
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++i;
      v.kind = Value::Kind::Array;
      if (eat(']')) return v;
      do v.array.push_back(value(depth + 1));
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Value::Kind::String;
      v.string = str();
    } else if (c == 't') {
      literal("true");
      v.kind = Value::Kind::Bool;
      v.boolean = true;
    } else if (c == 'f') {
      literal("false");
      v.kind = Value::Kind::Bool;
    } else if (c == 'n') {
      literal("null");
    } else {
      v.kind = Value::Kind::Number;
      v.number = num();
    }
    return v;
  }
};

}  // namespace

const Value* Value::find(const std::string& key) const {
  for (const auto& kv : object)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

Value parse(const std::string& text, int max_depth, size_t max_values, const char* what) {
  Parser p{text, 0, max_depth, max_values, what};
  Value v = p.value(0);
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

}  // namespace portgrad::json
