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
// Version 3: typed manifest rules, engine digests in sidecars. Version 4: classes are data (the model ends at the
// embedding; classes.safetensors holds W [C, d] and optionally b [C]); older bundles are refused (re-export).
constexpr int kMinSchemaVersion = 4;
constexpr int kMaxSchemaVersion = 4;

struct FileEntry {
  std::string sha256;  // lower-case hex
  int64_t bytes = 0;  // the file's size, checked (fstat) before it is read
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
  double logit_scale = 0;   // logits = logit_scale * embedding @ W.T + b (schema 4)
  bool class_bias = false;  // classes.bias: classes.safetensors holds class_bias [C]
  PreprocessConfig preprocess;
  std::string input_name = "image";
  int input_height = 0, input_width = 0;  // model input [N, 3, H, W]
  std::map<std::string, FileEntry> files;
  std::map<std::string, std::string> variants;  // variant name -> file
  std::vector<EngineEntry> engines;
};

// Every rule of export/bundle/manifest.py (and manifest.schema.json), in the same order with the same field paths
// and limits (src/manifest.cpp): names and file names by export/bundle/textrules.py's rules, integers without
// overflow or truncation, nesting at most 32 deep. Throws BundleError("<where>: manifest field <path>: ...").
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
  // The class matrix W [C * d] (row-major) and bias b [C] (empty when the manifest has none), read at open.
  const std::vector<float>& class_matrix() const { return class_matrix_; }
  const std::vector<float>& class_bias() const { return class_bias_; }

 private:
  Bundle(std::string root, Manifest m) : root_(std::move(root)), manifest_(std::move(m)) {}
  int open_listed(const std::string& name) const;
  void load_classes();  // classes.safetensors: W (and b), checked against the manifest
  std::string root_;
  Manifest manifest_;
  mutable std::mutex mutex_;
  mutable std::set<std::string> verified_;
  std::vector<float> class_matrix_, class_bias_;
};

}  // namespace clap_edge
