#include "engines.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "clap_edge/errors.hpp"

namespace clap_edge {
namespace {

// export/bundle/engines.py same_version: equal, or equal releases where one side has no local part ("+cu124").
bool same_version(const std::string& a, const std::string& b) {
  if (a == b) return true;
  const auto pa = a.find('+'), pb = b.find('+');
  return a.substr(0, pa) == b.substr(0, pb) && (pa == std::string::npos || pb == std::string::npos);
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
  info.kind = first_string(j, {"engine"});
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
    // The Python rules (export/bundle/engines.py mismatch): the exact GPU name, the same TensorRT version.
    if (e.gpu != gpu) reason = "built for " + e.gpu;
    else if (!same_version(e.library_version, library_version))
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

int cuda_device_index(const std::string& device) {
  if (device == "CPU") return 0;
  const bool digits = !device.empty() && device.size() <= 4 &&
                      std::all_of(device.begin(), device.end(), [](unsigned char c) { return std::isdigit(c); });
  if (!digits) throw Error("device '" + device + "' is not a CUDA device index (0, 1, ...) for the tensorrt backend");
  return std::stoi(device);  // at most 4 digits: cannot overflow
}

std::vector<EngineInfo> runnable_tensorrt_engines(const Bundle& bundle, std::string* refused) {
  const Manifest& m = bundle.manifest();
  std::vector<EngineInfo> infos;
  auto refuse = [&](const std::string& file, const std::string& why) {
    if (refused) *refused += (refused->empty() ? "" : "; ") + file + ": " + why;
  };
  for (const auto& e : m.engines) {
    if (e.sidecar.empty()) continue;
    const std::vector<char> text = bundle.read_file(e.sidecar);
    EngineInfo info = parse_engine_sidecar(std::string(text.begin(), text.end()), bundle.root() + "/" + e.sidecar);
    if (!info.kind.empty() && info.kind != "tensorrt") continue;  // an AOTInductor (or other) engine
    info.name = e.name;
    info.file = e.file;
    const std::string why = engine_unusable_reason(m, info, bundle.root());
    if (!why.empty()) {
      refuse(e.file, why);  // stale or swapped: never run, on any GPU (as the Python selection)
      continue;
    }
    infos.push_back(info);
  }
  return infos;
}

std::string auto_backend(const Bundle& bundle, bool tensorrt_built, const std::string& gpu,
                         const std::string& library_version, const std::string& precision) {
  if (!tensorrt_built || gpu.empty()) return "openvino";
  try {
    const auto engines = runnable_tensorrt_engines(bundle, nullptr);
    return select_engine(engines, gpu, library_version, precision, nullptr) ? "tensorrt" : "openvino";
  } catch (const BundleError&) {  // an unreadable sidecar: that engine does not fit; OpenVINO still can run
    return "openvino";
  }
}

}  // namespace clap_edge
