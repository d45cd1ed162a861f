/// @brief The portgrad file (safetensors layout): read defensively, written atomically.
///
/// Layout: an 8-byte little-endian header length N; N bytes of a JSON object (UTF-8, padded
/// with spaces to a multiple of 8); then the arrays' raw little-endian bytes, which cover the rest
/// of the file exactly, without gaps or overlaps. The header maps each array's path ("1/Weights")
/// to {"dtype": "F32" | "F64", "shape": [...], "data_offsets": [begin, end]} (offsets relative to
/// the end of the header), and "__metadata__" to string -> string:
///   "portgrad.format_version": "1", "portgrad.version": "0.1.0",
///   "portgrad.spec": the net's spec as a JSON text (metadata values must be strings).
/// A training checkpoint (NetTrain) also holds the optimiser's state as arrays named
/// "portgrad.state/..." (any shape) and its progress as metadata "portgrad.training" (JSON text);
/// loading it as a net ignores both.
/// The writer puts float64 arrays first, then float32 ones, so each array is aligned to its
/// element size (any safetensors reader rejects gaps, so odd-sized float32 arrays cannot all be
/// padded to 8 bytes). The reader accepts any order.
///
/// Every length, offset, shape, dtype and size is checked against the file's size before it is
/// used; the spec is validated as a spec from Python is. A malformed file raises ValueError naming
/// the file and what is wrong; the file's size bounds every allocation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "core/json.h"
#include "graph/net.h"

namespace portgrad::io {

constexpr const char* kFormatVersion = "1";
constexpr uint64_t kMaxHeaderBytes = uint64_t(16) << 20;  // 16 MiB of JSON
constexpr size_t kMaxHeaderValues = size_t(1) << 20;     // JSON values in the header, or in the spec

// One array of a file: its path, element type, shape, and where its bytes lie.
struct FileArray {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  const unsigned char* data = nullptr;  // little-endian, possibly unaligned
  size_t nbytes = 0;
};

// What a file holds, checked. `arrays` point into `storage` (or the caller's buffer for
// read_bytes), in the order of the net's parameters.
struct FileContents {
  std::string spec_json;
  json::Value spec;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<FileArray> arrays;
  std::vector<FileArray> state;  // "portgrad.state/..." arrays (a training checkpoint's), in file order
  // The engine net with every array set; null when the spec declares no input shape (such a net
  // has no arrays until data gives it shapes).
  std::unique_ptr<Net> net;
  // A "Varying"-length input: `net` is compiled for sequences of length 2 (the arrays' shapes do not
  // depend on it) and evaluating other lengths needs a net compiled for them.
  bool varying = false;
  std::vector<unsigned char> storage;
};

// Reads and checks a file. OSError if it cannot be read; ValueError if it is malformed.
FileContents read_file(const std::string& path);
// The same for bytes in memory; `what` names them in errors ("pickled net").
FileContents read_bytes(const unsigned char* data, size_t size, const std::string& what);

// An array to write: `data` holds numel(shape) elements of `dtype` (F32 or F64), C order.
struct ArrayRef {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  const void* data = nullptr;
};

// The bytes of a file holding `spec_json` (checked to be a JSON object) and `arrays`.
// `training` (if not empty) is written as metadata "portgrad.training"; arrays may include
// "portgrad.state/..." ones.
std::string serialize(const std::string& spec_json, const std::vector<ArrayRef>& arrays,
                      const std::string& training = "");
constexpr const char* kStatePrefix = "portgrad.state/";
// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
// fsync of the directory. An interrupted write leaves `path` as it was. OSError on failure.
void write_file_atomic(const std::string& path, const std::string& bytes);

// The library's version ("0.1.0"), written into every file.
const char* library_version();

}  // namespace portgrad::io
