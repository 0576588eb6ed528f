#include "engines.hpp"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "clap_edge/errors.hpp"

namespace clap_edge {
namespace {

std::string lower_trim(std::string s) {
  s.erase(0, s.find_first_not_of(" \t"));
  s.erase(s.find_last_not_of(" \t") + 1);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

std::string major_minor(const std::string& v) {
  const auto first = v.find('.');
  if (first == std::string::npos) return v;
  const auto second = v.find('.', first + 1);
  return v.substr(0, second);
}

std::string first_string(const nlohmann::json& j, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (j.contains(k) && j[k].is_string()) return j[k].get<std::string>();
  return "";
}

}  // namespace

EngineInfo parse_engine_sidecar(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw BundleError(where + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!j.is_object()) throw BundleError(where + ": engine sidecar must be a JSON object");
  EngineInfo info;
  info.gpu = first_string(j, {"gpu", "gpu_name"});
  // The Python builder (export/builders/engines/sidecar.py) writes {"device": {"name": ...}, "batch": [min, opt, max]}.
  if (info.gpu.empty() && j.contains("device") && j["device"].is_object())
    info.gpu = first_string(j["device"], {"name"});
  info.library_version = first_string(j, {"tensorrt_version", "library_version", "version"});
  info.precision = first_string(j, {"precision"});
  if (info.gpu.empty() || info.library_version.empty() || info.precision.empty())
    throw BundleError(where + ": engine sidecar must name gpu, tensorrt_version and precision");
  auto get_int = [&](const nlohmann::json& o, const char* k, int fallback) {
    return o.contains(k) && o[k].is_number_integer() ? o[k].get<int>() : fallback;
  };
  if (j.contains("batch") && j["batch"].is_array() && j["batch"].size() == 3 && j["batch"][0].is_number_integer() &&
      j["batch"][1].is_number_integer() && j["batch"][2].is_number_integer()) {
    info.min_batch = j["batch"][0].get<int>();
    info.opt_batch = j["batch"][1].get<int>();
    info.max_batch = j["batch"][2].get<int>();
  } else if (j.contains("batch_profile") && j["batch_profile"].is_object()) {
    const auto& p = j["batch_profile"];
    info.min_batch = get_int(p, "min", 1);
    info.max_batch = get_int(p, "max", info.min_batch);
    info.opt_batch = get_int(p, "opt", info.max_batch);
  } else {
    info.min_batch = get_int(j, "min_batch", 1);
    info.max_batch = get_int(j, "max_batch", info.min_batch);
    info.opt_batch = get_int(j, "opt_batch", info.max_batch);
  }
  if (info.min_batch < 1 || info.max_batch < info.min_batch || info.opt_batch < info.min_batch ||
      info.opt_batch > info.max_batch)
    throw BundleError(where + ": engine sidecar batch profile must satisfy 1 <= min <= opt <= max");
  info.file = first_string(j, {"file"});
  info.source_model = first_string(j, {"source_model"});
  info.source_sha256 = first_string(j, {"source_sha256"});
  info.engine_sha256 = first_string(j, {"engine_sha256"});
  return info;
}

std::string engine_unusable_reason(const Manifest& manifest, const EngineInfo& engine, const std::string& root) {
  namespace fs = std::filesystem;
  if (engine.engine_sha256.empty()) return "its sidecar records no engine_sha256; rebuild it";
  const auto source = manifest.files.find(engine.source_model);
  if (engine.source_model.empty() || source == manifest.files.end())
    return "built from " + engine.source_model + ", which this bundle no longer lists";
  if (source->second.sha256 != engine.source_sha256)
    return "built from a different " + engine.source_model + " (sha256 " + engine.source_sha256.substr(0, 12) +
           "...)";
  std::error_code ec;
  const fs::path path = fs::path(root) / engine.source_model;
  if (fs::is_symlink(fs::symlink_status(path, ec)) || !fs::is_regular_file(fs::symlink_status(path, ec)))
    return "built from " + engine.source_model + ", which is missing from the bundle";
  const auto listed = manifest.files.find(engine.file);
  const std::string have = listed == manifest.files.end() ? std::string("none") : listed->second.sha256;
  if (have != engine.engine_sha256)
    return "its bytes (sha256 " + have.substr(0, 12) + "...) are not the engine its sidecar records (engine_sha256 " +
           engine.engine_sha256.substr(0, 12) + "...): it was replaced; rebuild it";
  return "";
}

const EngineInfo* select_engine(const std::vector<EngineInfo>& engines, const std::string& gpu,
                                const std::string& library_version, const std::string& precision,
                                std::string* why_not) {
  std::vector<const EngineInfo*> fits;
  std::string reasons;
  for (const auto& e : engines) {
    std::string reason;
    if (lower_trim(e.gpu) != lower_trim(gpu)) reason = "built for " + e.gpu;
    else if (major_minor(e.library_version) != major_minor(library_version))
      reason = "built with TensorRT " + e.library_version;
    else if (precision != "auto" && e.precision != precision) reason = "precision " + e.precision;
    if (reason.empty()) fits.push_back(&e);
    else reasons += (reasons.empty() ? "" : "; ") + e.name + ": " + reason;
  }
  if (fits.empty()) {
    if (why_not) *why_not = reasons.empty() ? "the bundle lists no engines" : reasons;
    return nullptr;
  }
  for (const char* want : {"fp16", "fp32", "int8"})
    for (const EngineInfo* e : fits)
      if (e->precision == want) return e;
  return fits.front();
}

}  // namespace clap_edge
