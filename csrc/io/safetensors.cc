/// @brief Reading (bounds-checked before every access) and atomic writing of portgrad files.
#include "io/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <unordered_map>

#include "core/errors.h"

#ifndef PORTGRAD_VERSION_STRING
#define PORTGRAD_VERSION_STRING "unknown"
#endif

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "portgrad files hold little-endian arrays; a big-endian host needs byte swapping here");

namespace portgrad::io {
namespace {

using Kind = json::Value::Kind;

// Exactly representable integers of a JSON number (a double).
constexpr double kMaxJsonInteger = 9007199254740992.0;  // 2^53

std::string quoted(const std::string& s) {
  // Names in messages: printable ASCII as is, anything else escaped, and cut if long.
  std::string out = "\"";
  for (size_t k = 0; k < s.size() && k < 200; ++k) {
    unsigned char c = static_cast<unsigned char>(s[k]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') out += char(c);
    else out += cat("\\x", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]);
  }
  if (s.size() > 200) out += "...";
  return out + "\"";
}

uint64_t integer(const json::Value& v, const std::string& what) {
  if (v.kind != Kind::Number || v.number != std::floor(v.number) || v.number < 0 || v.number > kMaxJsonInteger)
    throw ValueError(cat(what, " must be a non-negative integer"));
  return static_cast<uint64_t>(v.number);
}

struct Parsed {
  std::string spec_json;
  json::Value spec;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<FileArray> arrays;  // data still relative offsets, in `offsets`
  std::vector<std::pair<uint64_t, uint64_t>> offsets;
};

// Checks the header (already bounded by the caller) against the size of the data that follows it.
Parsed parse_header(const std::string& text, uint64_t data_size) {
  if (text.empty() || text[0] != '{') throw ValueError("the header is not a JSON object");
  const json::Value header = json::parse(text, 64, kMaxHeaderValues, "the header");
  if (header.kind != Kind::Object) throw ValueError("the header is not a JSON object");
  Parsed p;
  const json::Value* meta = header.find("__metadata__");
  if (!meta)
    throw ValueError("the header has no \"__metadata__\": this is not a portgrad file (a safetensors file "
                     "with the weights alone has no net spec)");
  if (meta->kind != Kind::Object) throw ValueError("\"__metadata__\" must map strings to strings");
  for (const auto& [key, value] : meta->object) {
    if (value.kind != Kind::String)
      throw ValueError(cat("\"__metadata__\" must map strings to strings; ", quoted(key), " is not a string"));
    p.metadata.emplace_back(key, value.string);
  }
  const json::Value* format = meta->find("portgrad.format_version");
  if (!format) throw ValueError("\"__metadata__\" has no \"portgrad.format_version\": this is not a portgrad file");
  if (format->string != kFormatVersion)
    throw ValueError(cat("format version ", quoted(format->string), " is not supported: this portgrad (",
                         library_version(), ") reads format version ", kFormatVersion,
                         "; a newer portgrad may read it"));
  const json::Value* spec = meta->find("portgrad.spec");
  if (!spec) throw ValueError("\"__metadata__\" has no \"portgrad.spec\" (the net's spec)");
  p.spec_json = spec->string;
  p.spec = json::parse(p.spec_json, 64, kMaxHeaderValues, "the net spec in the header");
  if (p.spec.kind != Kind::Object) throw ValueError("the net spec in the header is not a JSON object");

  for (const auto& [name, entry] : header.object) {
    if (name == "__metadata__") continue;
    const std::string what = cat("array ", quoted(name));
    if (entry.kind != Kind::Object)
      throw ValueError(cat(what, ": expected {\"dtype\", \"shape\", \"data_offsets\"}"));
    for (const auto& [key, _] : entry.object)
      if (key != "dtype" && key != "shape" && key != "data_offsets")
        throw ValueError(cat(what, ": unknown field ", quoted(key)));
    const json::Value* dtype = entry.find("dtype");
    const json::Value* shape = entry.find("shape");
    const json::Value* offsets = entry.find("data_offsets");
    if (!dtype || !shape || !offsets) throw ValueError(cat(what, ": needs \"dtype\", \"shape\" and \"data_offsets\""));
    FileArray a;
    a.name = name;
    if (dtype->kind != Kind::String) throw ValueError(cat(what, ": \"dtype\" must be a string"));
    if (dtype->string == "F32") a.dtype = DType::F32;
    else if (dtype->string == "F64") a.dtype = DType::F64;
    else
      throw ValueError(cat(what, ": dtype ", quoted(dtype->string), " is not supported (portgrad arrays are \"F32\" or \"F64\")"));
    if (shape->kind != Kind::Array) throw ValueError(cat(what, ": \"shape\" must be a list of sizes"));
    if (shape->array.size() > 16) throw ValueError(cat(what, ": \"shape\" has more than 16 dimensions"));
    uint64_t numel = 1;
    bool overflow = false;
    for (const json::Value& d : shape->array) {
      const uint64_t n = integer(d, cat(what, ": every size in \"shape\""));
      a.shape.push_back(static_cast<int64_t>(n));
      overflow = overflow || __builtin_mul_overflow(numel, n, &numel);
    }
    uint64_t nbytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, uint64_t(dtype_size(a.dtype)), &nbytes);
    if (overflow || nbytes > data_size)
      throw ValueError(cat(what, ": shape ", shape_str(a.shape), " needs more bytes than the file holds (",
                           data_size, " bytes of data)"));
    if (offsets->kind != Kind::Array || offsets->array.size() != 2)
      throw ValueError(cat(what, ": \"data_offsets\" must be [begin, end]"));
    const uint64_t begin = integer(offsets->array[0], cat(what, ": \"data_offsets\""));
    const uint64_t end = integer(offsets->array[1], cat(what, ": \"data_offsets\""));
    if (begin > end || end > data_size)
      throw ValueError(cat(what, ": data_offsets [", begin, ", ", end, "] lie outside the ", data_size,
                           " bytes of data"));
    if (end - begin != nbytes)
      throw ValueError(cat(what, ": data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes, but shape ",
                           shape_str(a.shape), " of ", dtype->string, " needs ", nbytes));
    a.nbytes = static_cast<size_t>(nbytes);
    p.arrays.push_back(std::move(a));
    p.offsets.emplace_back(begin, end);
  }

  // The arrays must tile the data exactly: no overlap, no gap, nothing after the last.
  std::vector<size_t> order(p.arrays.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return p.offsets[x] < p.offsets[y]; });
  uint64_t covered = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const auto [begin, end] = p.offsets[order[k]];
    if (begin < covered)
      throw ValueError(cat("arrays ", quoted(p.arrays[order[k - 1]].name), " and ", quoted(p.arrays[order[k]].name),
                           " overlap (their data_offsets are [", p.offsets[order[k - 1]].first, ", ",
                           p.offsets[order[k - 1]].second, "] and [", begin, ", ", end, "])"));
    if (begin > covered)
      throw ValueError(cat("bytes ", covered, " to ", begin, " of the data belong to no array"));
    covered = end;
  }
  if (covered != data_size)
    throw ValueError(cat("the last ", data_size - covered, " bytes of the file belong to no array"));
  return p;
}

// Builds the net from the spec, matches the file's arrays to its parameters by name and shape, and
// only then calls `data()` for the data section (bounds checked) and sets the arrays: a file whose
// arrays do not fit the net is refused before its data is read (a sparse file's apparent size is
// never allocated for nothing).
template <typename Data>
FileContents finish(Parsed p, Data&& data) {
  FileContents c;
  c.spec_json = std::move(p.spec_json);
  c.metadata = std::move(p.metadata);

  const auto declared = Net::declared_inputs(p.spec);  // validates the spec's structure
  // (A net without input ports, such as a ConstantArrayLayer alone, has all its shapes: not shape-free.)
  const bool shape_free =
      !declared.empty() && std::all_of(declared.begin(), declared.end(), [](auto& d) { return !d.second; });
  if (shape_free) {
    if (!p.arrays.empty())
      throw ValueError(cat("the net declares no input shape, so it has no arrays, but the file holds array ",
                           quoted(p.arrays.front().name)));
    c.spec = std::move(p.spec);
    return c;
  }
  // The net may allocate what the file holds (bounded by its size: shapes were checked against
  // it) plus a little, so that a small missing array is reported as missing.
  int64_t elements = int64_t(1) << 20;
  for (const FileArray& a : p.arrays) elements += shape_numel(a.shape);
  std::vector<std::pair<std::string, Shape>> lengths;  // a varying port at a length that fits any net
  for (const auto& [name, shape] : declared)
    if (shape && !shape->empty() && (*shape)[0] == kVarying) {
      Shape probe = *shape;
      probe[0] = 2;
      lengths.emplace_back(name, probe);
    }
  c.varying = !lengths.empty();
  c.net = std::make_unique<Net>(p.spec, lengths, elements);
  c.spec = std::move(p.spec);

  std::unordered_map<std::string, size_t> by_name;
  std::vector<size_t> state;
  for (size_t k = 0; k < p.arrays.size(); ++k) {
    if (p.arrays[k].name.rfind(kStatePrefix, 0) == 0) state.push_back(k);  // a checkpoint's optimiser state
    else by_name.emplace(p.arrays[k].name, k);
  }
  const auto& params = c.net->params();
  std::vector<size_t> file_index(params.size());
  for (size_t q = 0; q < params.size(); ++q) {
    auto it = by_name.find(params[q].path);
    if (it == by_name.end())
      throw ValueError(cat("array ", quoted(params[q].path), " of shape ", shape_str(params[q].shape),
                           " is missing from the file"));
    const FileArray& a = p.arrays[it->second];
    if (a.shape != params[q].shape)
      throw ValueError(cat("array ", quoted(a.name), ": the net needs shape ", shape_str(params[q].shape),
                           ", the file holds shape ", shape_str(a.shape)));
    file_index[q] = it->second;
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    // Report the first in file order, so the message does not depend on hashing.
    for (const FileArray& a : p.arrays)
      if (by_name.count(a.name)) {
        std::string have;
        for (const auto& q : params) have += cat(have.empty() ? "" : ", ", q.path);
        throw ValueError(cat("the file holds array ", quoted(a.name), ", which the net does not have (its arrays: ",
                             have.empty() ? "none" : have, ")"));
      }
  }
  const unsigned char* bytes = data();
  for (size_t q = 0; q < params.size(); ++q) {
    FileArray a = p.arrays[file_index[q]];
    a.data = bytes + p.offsets[file_index[q]].first;
    c.net->set_param(static_cast<int>(q), a.data, a.dtype);
    c.arrays.push_back(a);
  }
  for (size_t k : state) {
    FileArray a = p.arrays[k];
    a.data = bytes + p.offsets[k].first;
    c.state.push_back(a);
  }
  return c;
}

// Re-throws an error of the checks with the file named in front.
template <typename F>
auto naming(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ValueError& e) {
    throw ValueError(cat(what, ": ", e.what()));
  } catch (const TypeError& e) {
    throw ValueError(cat(what, ": ", e.what()));
  } catch (const KeyError& e) {
    throw ValueError(cat(what, ": ", e.what()));
  } catch (const IndexError& e) {
    throw ValueError(cat(what, ": ", e.what()));
  }
}

uint64_t read_u64_le(const unsigned char* b) {
  uint64_t v = 0;
  for (int k = 7; k >= 0; --k) v = (v << 8) | b[k];
  return v;
}

[[noreturn]] void os_error(int err, const std::string& doing, const std::string& path) {
  throw OSError(err, cat(doing, " ", quoted(path), ": ", std::strerror(err)), path);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly n bytes at offset; false at a premature end of file.
bool read_exact(int fd, uint64_t offset, unsigned char* dst, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, std::min<size_t>(n, size_t(1) << 30), static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      os_error(errno, "cannot read portgrad file", path);
    }
    if (got == 0) return false;
    dst += got;
    offset += uint64_t(got);
    n -= size_t(got);
  }
  return true;
}

}  // namespace

const char* library_version() { return PORTGRAD_VERSION_STRING; }

static std::string header_length_error(uint64_t n, uint64_t size) {
  return cat("header length ", n, " runs past the end of the file (", size, " bytes)");
}

FileContents read_bytes(const unsigned char* data, size_t size, const std::string& what) {
  return naming(what, [&] {
    if (size < 8) throw ValueError(cat("too short (", size, " bytes) to be a portgrad file"));
    const uint64_t n = read_u64_le(data);
    if (n > size - 8) throw ValueError(header_length_error(n, size));
    if (n > kMaxHeaderBytes) throw ValueError(cat("header length ", n, " is over the limit of ", kMaxHeaderBytes, " bytes"));
    Parsed p = parse_header(std::string(reinterpret_cast<const char*>(data) + 8, size_t(n)), size - 8 - n);
    return finish(std::move(p), [&] { return data + 8 + n; });
  });
}

// A path with a NUL byte would be cut short at it by the system: refuse it instead.
void check_path(const std::string& path, const char* doing) {
  if (path.find('\0') != std::string::npos)
    throw ValueError(cat(doing, " ", quoted(path.substr(0, path.find('\0'))), "...: the path contains a NUL byte"));
}

FileContents read_file(const std::string& path) {
  check_path(path, "cannot open portgrad file");
  Fd f;
  // Non-blocking: opening a FIFO for reading would otherwise wait for a writer (it is refused
  // below as not a regular file); for a regular file the flag changes nothing.
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) os_error(errno, "cannot open portgrad file", path);
  struct stat st;
  if (::fstat(f.fd, &st) != 0) os_error(errno, "cannot read portgrad file", path);
  if (S_ISDIR(st.st_mode)) os_error(EISDIR, "cannot read portgrad file", path);
  if (!S_ISREG(st.st_mode))
    throw ValueError(cat("portgrad file ", quoted(path), ": not a regular file"));
  const uint64_t size = uint64_t(st.st_size);
  return naming(cat("portgrad file ", quoted(path)), [&] {
    unsigned char len[8];
    if (size < 8 || !read_exact(f.fd, 0, len, 8, path))
      throw ValueError(cat("too short (", size, " bytes) to be a portgrad file"));
    const uint64_t n = read_u64_le(len);
    if (n > size - 8) throw ValueError(header_length_error(n, size));
    if (n > kMaxHeaderBytes) throw ValueError(cat("header length ", n, " is over the limit of ", kMaxHeaderBytes, " bytes"));
    std::string text(size_t(n), '\0');
    if (!read_exact(f.fd, 8, reinterpret_cast<unsigned char*>(text.data()), size_t(n), path))
      throw ValueError("the file shrank while it was read");
    Parsed p = parse_header(text, size - 8 - n);
    // The data is read only once the header has been checked against the file's size and the net.
    std::vector<unsigned char> storage;
    FileContents c = finish(std::move(p), [&] {
      storage.resize(size_t(size - 8 - n));
      if (!read_exact(f.fd, 8 + n, storage.data(), storage.size(), path))
        throw ValueError("the file shrank while it was read");
      return static_cast<const unsigned char*>(storage.data());
    });
    c.storage = std::move(storage);  // the vector's buffer moves with it: arrays stay valid
    return c;
  });
}

// ----------------------------------------------------------------------------- writing
namespace {

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20) out += cat("\\u00", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]);
    else out += char(c);
  }
  out += '"';
}

}  // namespace

std::string serialize(const std::string& spec_json, const std::vector<ArrayRef>& arrays, const std::string& training) {
  if (json::parse(spec_json).kind != Kind::Object) throw ValueError("a net spec must be a JSON object");
  // float64 first, then float32: each array aligned to its element size (the header is padded to 8).
  std::vector<const ArrayRef*> order;
  for (const ArrayRef& a : arrays) {
    if (a.dtype != DType::F32 && a.dtype != DType::F64)
      throw TypeError(cat("array ", quoted(a.name), " must be float32 or float64"));
    if (a.name == "__metadata__" || a.name.empty()) throw ValueError(cat("array name ", quoted(a.name), " is reserved"));
    order.push_back(&a);
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const ArrayRef* x, const ArrayRef* y) { return dtype_size(x->dtype) > dtype_size(y->dtype); });
  std::string header = "{\"__metadata__\":{\"portgrad.format_version\":";
  json_string(header, kFormatVersion);
  header += ",\"portgrad.spec\":";
  json_string(header, spec_json);
  header += ",\"portgrad.version\":";
  json_string(header, library_version());
  if (!training.empty()) {
    header += ",\"portgrad.training\":";
    json_string(header, training);
  }
  header += "}";
  uint64_t offset = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const ArrayRef& a = *order[k];
    for (size_t j = 0; j < k; ++j)
      if (order[j]->name == a.name) throw ValueError(cat("two arrays are named ", quoted(a.name)));
    const uint64_t nbytes = uint64_t(shape_numel(a.shape)) * dtype_size(a.dtype);
    header += ",";
    json_string(header, a.name);
    header += cat(":{\"dtype\":\"", a.dtype == DType::F64 ? "F64" : "F32", "\",\"shape\":[");
    for (size_t d = 0; d < a.shape.size(); ++d) header += cat(d ? "," : "", a.shape[d]);
    header += cat("],\"data_offsets\":[", offset, ",", offset + nbytes, "]}");
    offset += nbytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + header.size() + size_t(offset));
  const uint64_t n = header.size();
  for (int k = 0; k < 8; ++k) out += char((n >> (8 * k)) & 0xff);
  out += header;
  for (const ArrayRef* a : order)
    out.append(static_cast<const char*>(a->data), size_t(shape_numel(a->shape)) * dtype_size(a->dtype));
  return out;
}

namespace {

// The file a save writes: through symbolic links to their final target (so a link keeps pointing
// at the saved net), relative links resolved against their own folder.
std::string save_target(std::string path) {
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return path;
    std::string link(size_t(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
    const ssize_t n = ::readlink(path.c_str(), link.data(), link.size());
    if (n < 0) return path;
    link.resize(size_t(n));
    const size_t slash = path.rfind('/');
    path = link.front() == '/' || slash == std::string::npos ? link : path.substr(0, slash + 1) + link;
  }
  os_error(ELOOP, "cannot write portgrad file", path);
}

// Removes the temporary files that saves of `base` in `dir` killed before their rename left
// behind: ".<base>.tmp-<pid>-..." whose process no longer exists.
void remove_stale_temporaries(const std::string& dir, const std::string& base) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const std::string prefix = cat(".", base, ".tmp-");
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid > 0 && pid != long(::getpid()) && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH)
      (void)::unlink((dir + "/" + name).c_str());
  }
  ::closedir(d);
}

}  // namespace

void write_file_atomic(const std::string& given, const std::string& bytes) {
  check_path(given, "cannot write portgrad file");
  const std::string path = save_target(given);
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty()) os_error(EISDIR, "cannot write portgrad file", path);
  remove_stale_temporaries(dir, base);
  struct stat old;
  const bool replacing = ::stat(path.c_str(), &old) == 0 && S_ISREG(old.st_mode);
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  std::string tmp;
  Fd f;
  for (int attempt = 0; f.fd < 0; ++attempt) {
    tmp = cat(dir, "/.", base, ".tmp-", ::getpid(), "-", counter.fetch_add(1), "-", rd());
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (f.fd < 0 && (errno != EEXIST || attempt > 100)) os_error(errno, "cannot write portgrad file", path);
  }
  auto fail = [&](int err) {
    ::close(f.fd);
    f.fd = -1;
    ::unlink(tmp.c_str());
    os_error(err, "cannot write portgrad file", path);
  };
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t put = ::write(f.fd, p, std::min<size_t>(left, size_t(1) << 30));
    if (put < 0) {
      if (errno == EINTR) continue;
      fail(errno);
    }
    p += put;
    left -= size_t(put);
  }
  if (replacing && ::fchmod(f.fd, old.st_mode & 07777) != 0) fail(errno);  // the replaced file's mode
  if (::fsync(f.fd) != 0) fail(errno);
  const int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    os_error(err, "cannot write portgrad file", path);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    os_error(err, "cannot write portgrad file", path);
  }
  // Make the rename itself durable (best effort: some file systems refuse to fsync a directory).
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) (void)::fsync(d.fd);
}

}  // namespace portgrad::io
