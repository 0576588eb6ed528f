// A bundle directory: manifest.json (validated by the schema's rules) and the files it lists (sha256-checked).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "clap_edge/image.hpp"

namespace clap_edge {

// Manifest schema versions this runtime reads (export/bundle/names.py SCHEMA_VERSION; 2 adds the JSON Schema).
// Version 3: typed manifest rules, engine digests in sidecars; older bundles are refused (re-export).
constexpr int kMinSchemaVersion = 3;
constexpr int kMaxSchemaVersion = 3;

struct FileEntry {
  std::string sha256;  // lower-case hex
  int64_t bytes = -1;  // -1 when the manifest does not say
};

// One compiled engine (e.g. a TensorRT plan) and the facts its JSON sidecar states.
struct EngineEntry {
  std::string name;
  std::string file;     // bundle-relative path of the engine
  std::string sidecar;  // bundle-relative path of its JSON sidecar ("" if none)
};

struct Manifest {
  int schema_version = 0;
  std::string model_name;
  std::vector<std::string> class_names;
  int embed_dim = 0;
  PreprocessConfig preprocess;
  std::string input_name = "image";
  int input_height = 0, input_width = 0;  // model input [N, 3, H, W]
  std::map<std::string, FileEntry> files;
  std::map<std::string, std::string> variants;  // variant name -> file
  std::vector<EngineEntry> engines;
};

// Every rule the runtime checks on a manifest, in one place (aligned with export/bundle/manifest.schema.json):
// schema_version in [kMinSchemaVersion, kMaxSchemaVersion]; required fields and their types; unique class names;
// positive embed_dim; preprocess (size, 3 finite means, 3 finite positive stds, known interpolation and
// resize_mode, RGB); inputs [N, 3, H, W] agreeing with preprocess size; outputs logits [N, C] and embedding
// [N, d] agreeing with class_names and embed_dim; files inside the bundle with 64-hex sha256; variants and
// engines naming listed files. Throws BundleError("<where>: manifest ...") on the first violation.
Manifest parse_manifest(const std::string& json_text, const std::string& where);

// sha256 of a file as lower-case hex (OpenSSL EVP). Throws BundleError if unreadable.
std::string sha256_file(const std::string& path);

class Bundle {
 public:
  // Open a bundle directory: read and validate manifest.json, check the class embeddings file's hash.
  static std::shared_ptr<Bundle> open(const std::string& dir);

  const std::string& root() const { return root_; }
  const Manifest& manifest() const { return manifest_; }
  bool has_file(const std::string& name) const { return manifest_.files.count(name) != 0; }
  // Absolute path of a listed file after checking that it exists and that its sha256 matches (once).
  std::string file(const std::string& name) const;
  // The bytes of a listed file, checked against its sha256 (the check and the read see the same bytes).
  std::vector<char> read_file(const std::string& name) const;

 private:
  Bundle(std::string root, Manifest m) : root_(std::move(root)), manifest_(std::move(m)) {}
  void check_listed(const std::string& name) const;
  std::string root_;
  Manifest manifest_;
  mutable std::mutex mutex_;
  mutable std::set<std::string> verified_;
};

}  // namespace clap_edge
