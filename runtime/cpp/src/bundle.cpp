// manifest.json validation (nlohmann-json), sha256 (OpenSSL EVP) and the bundle's checked file access.
#include <openssl/evp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "clap_edge/bundle.hpp"
#include "clap_edge/errors.hpp"

namespace clap_edge {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kManifest = "manifest.json";
const char* const kClassesFile = "classes.safetensors";
const char* const kManifestDigest = "manifest.sha256";  // "<sha256 hex>  manifest.json" (sha256sum -c format)
const char* const kRequired[] = {"schema_version", "model", "class_names", "embed_dim",
                                 "preprocess",     "inputs", "outputs",     "files"};

bool is_int(const json& v) { return v.is_number_integer(); }

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
  return true;
}

// A bundle-relative file name that stays inside the bundle: not absolute, no "..", not empty.
bool inside_bundle(const std::string& name) {
  if (name.empty()) return false;
  const fs::path p(name);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

std::array<float, 3> three(const json& v, const char* name, std::array<float, 3> fallback,
                           const std::function<void(const std::string&)>& bad) {
  if (v.is_null()) return fallback;
  std::array<float, 3> out{};
  if (v.is_number()) {
    out.fill(v.get<float>());
  } else if (v.is_array() && v.size() == 3 && v[0].is_number() && v[1].is_number() && v[2].is_number()) {
    for (int i = 0; i < 3; ++i) out[i] = static_cast<float>(v[i].get<double>());
  } else {
    bad(std::string("preprocess ") + name + " must be 3 numbers");
  }
  for (float x : out)
    if (!std::isfinite(x)) bad(std::string("preprocess ") + name + " must be finite");
  return out;
}

PreprocessConfig parse_preprocess(const json& p, const std::function<void(const std::string&)>& bad) {
  PreprocessConfig cfg;
  const json& size = p.contains("size") ? p["size"] : json();
  if (is_int(size)) {
    cfg.height = cfg.width = size.get<int>();
  } else if (size.is_array() && (size.size() == 1 || size.size() == 2) && is_int(size[0]) && is_int(size.back())) {
    cfg.height = size[0].get<int>();
    cfg.width = size.back().get<int>();
  } else if (!size.is_null()) {
    bad("preprocess size must be an integer or [H, W]");
  }
  if (cfg.height < 1 || cfg.width < 1) bad("preprocess size must be positive");
  cfg.mean = three(p.value("mean", json()), "mean", cfg.mean, bad);
  cfg.std = three(p.value("std", json()), "std", cfg.std, bad);
  for (float s : cfg.std)
    if (!(s > 0)) bad("preprocess std must be positive");
  const json mode = p.value("mode", json());
  if (!mode.is_null() && mode != "RGB") bad("preprocess mode must be \"RGB\"");
  const json interp = p.value("interpolation", json());
  if (!interp.is_null()) {
    if (!interp.is_string()) bad("preprocess interpolation must be a string");
    cfg.interpolation = interp.get<std::string>();
    if (cfg.interpolation != "bicubic" && cfg.interpolation != "bilinear" && cfg.interpolation != "nearest" &&
        cfg.interpolation != "random")
      bad("preprocess interpolation '" + cfg.interpolation + "' is not one of bicubic, bilinear, nearest, random");
  }
  const json rm = p.value("resize_mode", json());
  if (!rm.is_null()) {
    if (!rm.is_string()) bad("preprocess resize_mode must be a string");
    cfg.resize_mode = rm.get<std::string>();
    if (cfg.resize_mode != "shortest" && cfg.resize_mode != "longest" && cfg.resize_mode != "squash")
      bad("preprocess resize_mode '" + cfg.resize_mode + "' is not one of shortest, longest, squash");
  }
  const json fill = p.value("fill_color", json());
  if (!fill.is_null()) {
    if (!is_int(fill)) bad("preprocess fill_color must be an integer");
    cfg.fill_color = fill.get<int>();
  }
  return cfg;
}

// The width of a 2-D output [N, width] named `name`; -1 if symbolic.
int64_t output_width(const json& outputs, const std::string& name, const std::function<void(const std::string&)>& bad) {
  for (const auto& o : outputs) {
    if (o.value("name", json()) != name) continue;
    const json shape = o.value("shape", json());
    if (!shape.is_array() || shape.size() != 2) bad("outputs lists no 2-D output '" + name + "'");
    return is_int(shape[1]) ? shape[1].get<int64_t>() : -1;
  }
  bad("outputs lists no 2-D output '" + name + "'");
  return -1;
}

void parse_engines(const json& engines, Manifest& m, const std::function<void(const std::string&)>& bad) {
  // Either a list of {name?, file, sidecar?} or an object name -> {file, sidecar?}.
  auto add = [&](const std::string& name, const json& e) {
    if (!e.is_object() || !e.contains("file") || !e["file"].is_string()) bad("engines entries need a \"file\"");
    EngineEntry entry{name, e["file"].get<std::string>(), ""};
    if (e.contains("sidecar")) {
      if (!e["sidecar"].is_string()) bad("engines sidecar must be a file name");
      entry.sidecar = e["sidecar"].get<std::string>();
    }
    for (const std::string& f : {entry.file, entry.sidecar})
      if (!f.empty() && !m.files.count(f)) bad("engines names '" + f + "', which is not listed in files");
    if (entry.name.empty()) entry.name = entry.file;
    m.engines.push_back(entry);
  };
  if (engines.is_array()) {
    for (const auto& e : engines) {
      std::string name;
      if (e.is_object()) name = e.value("name", json()).is_string() ? e["name"].get<std::string>()
                              : e.value("engine", json()).is_string() ? e["engine"].get<std::string>() : "";
      add(name, e);
    }
  } else if (engines.is_object()) {
    for (const auto& [name, e] : engines.items()) add(name, e);
  } else if (!engines.is_null()) {
    bad("engines must be a list or an object");
  }
}

}  // namespace

Manifest parse_manifest(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& what) -> void { throw BundleError(where + ": manifest field " + what); };
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw BundleError(where + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!j.is_object()) throw BundleError(where + ": manifest must be a JSON object");
  const json version = j.value("schema_version", json());
  if (!is_int(version)) throw BundleError(where + ": missing or non-integer schema_version");
  Manifest m;
  m.schema_version = version.get<int>();
  if (m.schema_version > kMaxSchemaVersion)
    throw BundleError(where + ": schema_version " + std::to_string(m.schema_version) +
                      " is newer than this runtime reads (<= " + std::to_string(kMaxSchemaVersion) +
                      "); upgrade clap-edge");
  if (m.schema_version < kMinSchemaVersion)  // same line as the Python reader (export/bundle/names.py)
    throw BundleError(where + ": manifest field schema_version: " + std::to_string(m.schema_version) +
                      " is older than this clap-edge reads (>= " + std::to_string(kMinSchemaVersion) +
                      "); re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)");
  std::vector<std::string> missing;
  for (const char* k : kRequired)
    if (!j.contains(k)) missing.push_back(k);
  if (!missing.empty()) {
    std::string list;
    for (const auto& k : missing) list += (list.empty() ? "'" : ", '") + k + "'";
    throw BundleError(where + ": manifest is missing fields [" + list + "]");
  }
  // model
  if (!j["model"].is_object()) bad("model must be an object");
  m.model_name = j["model"].value("model_name", json()).is_string() ? j["model"]["model_name"].get<std::string>() : "";
  // class_names
  const json& names = j["class_names"];
  if (!names.is_array() || names.empty()) bad("class_names must be a non-empty list of strings");
  std::set<std::string> seen;
  for (const auto& c : names) {
    if (!c.is_string()) bad("class_names must be a non-empty list of strings");
    if (!seen.insert(c.get<std::string>()).second) throw BundleError(where + ": class_names contains duplicates");
    m.class_names.push_back(c.get<std::string>());
  }
  if (!is_int(j["embed_dim"]) || j["embed_dim"].get<int64_t>() < 1) bad("embed_dim must be a positive integer");
  m.embed_dim = j["embed_dim"].get<int>();
  if (!j["preprocess"].is_object()) bad("preprocess must be an object");
  m.preprocess = parse_preprocess(j["preprocess"], bad);
  // inputs: [N, 3, H, W] agreeing with the preprocess size
  const json& inputs = j["inputs"];
  if (!inputs.is_array() || inputs.empty() || !inputs[0].is_object() || !inputs[0].value("shape", json()).is_array() ||
      inputs[0]["shape"].size() != 4)
    bad("inputs must list the image input with a 4-D shape [N, 3, H, W]");
  const json& shape = inputs[0]["shape"];
  if (!is_int(shape[1]) || shape[1] != 3 || !is_int(shape[2]) || !is_int(shape[3]))
    bad("inputs shape must be [N, 3, H, W] with integer C, H, W");
  m.input_name = inputs[0].value("name", std::string("image"));
  m.input_height = shape[2].get<int>();
  m.input_width = shape[3].get<int>();
  if (m.input_height != m.preprocess.height || m.input_width != m.preprocess.width)
    throw BundleError(where + ": preprocess size [" + std::to_string(m.preprocess.height) + ", " +
                      std::to_string(m.preprocess.width) + "] does not match the model input shape [3, " +
                      std::to_string(m.input_height) + ", " + std::to_string(m.input_width) + "]");
  // outputs: logits [N, C], embedding [N, d]
  const json& outputs = j["outputs"];
  if (!outputs.is_array()) bad("outputs must be a list of objects");
  for (const auto& o : outputs)
    if (!o.is_object()) bad("outputs must be a list of objects");
  const int64_t c = output_width(outputs, "logits", bad), d = output_width(outputs, "embedding", bad);
  if (c != -1 && c != int64_t(m.class_names.size()))
    throw BundleError(where + ": manifest output 'logits' has width " + std::to_string(c) + " but the bundle has " +
                      std::to_string(m.class_names.size()) + " classes");
  if (d != -1 && d != m.embed_dim)
    throw BundleError(where + ": manifest output 'embedding' has width " + std::to_string(d) + " but the bundle has " +
                      std::to_string(m.embed_dim) + " embedding dims");
  // files
  const json& files = j["files"];
  if (!files.is_object()) bad("files must be an object of file name -> {sha256, bytes}");
  for (const auto& [name, entry] : files.items()) {
    if (!inside_bundle(name)) bad("files lists '" + name + "', which is outside the bundle");
    if (!entry.is_object() || !entry.value("sha256", json()).is_string() || !is_hex64(entry["sha256"].get<std::string>()))
      bad("files['" + name + "'] has no sha256");
    FileEntry fe;
    fe.sha256 = entry["sha256"].get<std::string>();
    for (auto& ch : fe.sha256) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    if (entry.contains("bytes")) {
      if (!is_int(entry["bytes"]) || entry["bytes"].get<int64_t>() < 0) bad("files['" + name + "'] bytes must be >= 0");
      fe.bytes = entry["bytes"].get<int64_t>();
    }
    m.files[name] = fe;
  }
  // schema_version 2 (export/bundle/manifest.schema.json) bounds more: classes.safetensors listed, every file
  // with its byte count, fill_color a grey level, no bundle meta file listed in files.
  if (m.schema_version >= 2) {
    if (!m.files.count(kClassesFile)) bad("files must list 'classes.safetensors'");
    for (const auto& [name, fe] : m.files) {
      if (fe.bytes < 0) bad("files['" + name + "'] has no bytes");
      if (name == kManifest || name == kManifestDigest || name == "bundle.sig")
        bad("files lists '" + name + "', which the bundle manages itself");
    }
    if (m.preprocess.fill_color < 0 || m.preprocess.fill_color > 255) bad("preprocess fill_color must be 0..255");
    if (m.preprocess.height > 16384 || m.preprocess.width > 16384) bad("preprocess size must be at most 16384");
  }
  // variants: name -> a listed file
  const json variants = j.value("variants", json::object());
  if (!variants.is_object()) bad("variants must map variant names to files listed in files");
  for (const auto& [name, file] : variants.items()) {
    if (!file.is_string() || !m.files.count(file.get<std::string>()))
      bad("variants must map variant names to files listed in files");
    m.variants[name] = file.get<std::string>();
  }
  parse_engines(j.value("engines", json()), m, bad);
  return m;
}

namespace {
using DigestCtx = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

DigestCtx sha256_start() {
  DigestCtx ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw BundleError("OpenSSL sha256 unavailable");
  return ctx;
}

std::string sha256_hex(EVP_MD_CTX* ctx) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string sha256_bytes(const void* data, size_t size) {
  DigestCtx ctx = sha256_start();
  EVP_DigestUpdate(ctx.get(), data, size);
  return sha256_hex(ctx.get());
}

[[noreturn]] void throw_modified(const std::string& root, const std::string& name, const std::string& actual,
                                 const std::string& want) {
  throw BundleError(root + ": '" + name + "' is corrupt or was modified: sha256 " + actual.substr(0, 16) +
                    "... does not match the manifest's " + want.substr(0, 16) + "...");
}
}  // namespace

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw BundleError(path + ": cannot read file");
  DigestCtx ctx = sha256_start();
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    if (f.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), size_t(f.gcount()));
  }
  return sha256_hex(ctx.get());
}

namespace {
// manifest.sha256 beside manifest.json (schema 2 requires it; a version-1 bundle is checked when it has one).
void check_manifest_digest(const fs::path& root, const std::string& manifest_text, int schema_version) {
  const fs::path digest_path = root / kManifestDigest;
  std::error_code ec;
  if (!fs::is_regular_file(digest_path, ec)) {
    if (schema_version >= 2)
      throw BundleError(root.string() + ": missing file '" + kManifestDigest + "' (schema_version 2 requires it)");
    return;
  }
  std::ifstream f(digest_path);
  std::string want, name;
  f >> want >> name;
  const std::string actual = sha256_bytes(manifest_text.data(), manifest_text.size());
  if (!is_hex64(want) || (!name.empty() && name != kManifest && name != std::string("*") + kManifest))
    throw BundleError(root.string() + ": '" + kManifestDigest + "' is not '<sha256>  manifest.json'");
  for (auto& ch : want) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (actual != want)
    throw BundleError(root.string() + ": '" + std::string(kManifest) + "' was modified: its sha256 " +
                      actual.substr(0, 16) + "... does not match '" + kManifestDigest + "' (" + want.substr(0, 16) +
                      "...)");
}
}  // namespace

std::shared_ptr<Bundle> Bundle::open(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    const char* problem = fs::exists(root, ec) ? "a file, not a directory (unpack a .tar bundle first)"
                                               : "no such file or directory";
    throw BundleError(dir + ": not a bundle directory (" + problem + ")");
  }
  const fs::path manifest_path = root / kManifest;
  if (!fs::is_regular_file(manifest_path, ec))
    throw BundleError(dir + ": missing file '" + kManifest + "' (not a clap-edge bundle?)");
  std::ifstream f(manifest_path);
  std::stringstream text;
  text << f.rdbuf();
  const std::string manifest_text = text.str();
  Manifest m = parse_manifest(manifest_text, manifest_path.string());
  check_manifest_digest(root, manifest_text, m.schema_version);
  std::shared_ptr<Bundle> bundle(new Bundle(dir, std::move(m)));
  if (bundle->has_file(kClassesFile)) bundle->file(kClassesFile);  // as Bundle.open(verify=True) in Python
  return bundle;
}

void Bundle::check_listed(const std::string& name) const {
  if (!manifest_.files.count(name)) throw BundleError(root_ + ": '" + name + "' is not listed in " + kManifest);
  std::error_code ec;
  if (!fs::is_regular_file(fs::path(root_) / name, ec))
    throw BundleError(root_ + ": missing file '" + name + "' (listed in " + kManifest + ")");
}

std::string Bundle::file(const std::string& name) const {
  check_listed(name);
  const std::string path = (fs::path(root_) / name).string();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!verified_.count(name)) {
    const std::string& want = manifest_.files.at(name).sha256;
    const std::string actual = sha256_file(path);
    if (actual != want) throw_modified(root_, name, actual, want);
    verified_.insert(name);
  }
  return path;
}

std::vector<char> Bundle::read_file(const std::string& name) const {
  check_listed(name);
  std::ifstream f(fs::path(root_) / name, std::ios::binary);
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::string actual = sha256_bytes(data.data(), data.size()), &want = manifest_.files.at(name).sha256;
  if (actual != want) throw_modified(root_, name, actual, want);  // hashed in memory: the bytes checked are used
  return data;
}

}  // namespace clap_edge
