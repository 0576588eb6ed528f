// Choosing a compiled engine from a bundle's `engines` section: each engine has a JSON sidecar naming the GPU,
// the library version, the precision and the batch profile it was built for; an engine runs only there.
#pragma once

#include <string>
#include <vector>

#include "clap_edge/bundle.hpp"

namespace clap_edge {

struct EngineInfo {
  std::string name, file;
  std::string gpu;              // e.g. "NVIDIA H100 80GB HBM3"
  std::string library_version;  // e.g. "10.3.0"
  std::string precision;        // fp32 | fp16 | int8 | ...
  int min_batch = 1, opt_batch = 1, max_batch = 1;
  // schema_version 3 (export/bundle/sidecar.schema.json): the model it was built from and both digests
  std::string source_model, source_sha256, engine_sha256;
};

// Parse a sidecar (keys: gpu | gpu_name, tensorrt_version | library_version | version, precision,
// batch_profile {min, opt, max} | min_batch/opt_batch/max_batch). Throws BundleError("<where>: ...").
EngineInfo parse_engine_sidecar(const std::string& json_text, const std::string& where);

// Why an engine cannot run from this bundle whatever the machine ("" when it can), as the Python selection says
// it (export/bundle/engines.py): no engine_sha256 recorded; its source model no longer listed, a different one,
// or missing from the folder `root`; its listed sha256 (which Bundle::file checks against the bytes) is not the
// engine_sha256 its sidecar records (the engine was swapped).
std::string engine_unusable_reason(const Manifest& manifest, const EngineInfo& engine, const std::string& root);

// The engine built for this GPU and library (major.minor), of `precision` ("auto": fp16, then fp32, then int8,
// then any); nullptr when none fits, with the reasons in *why_not.
const EngineInfo* select_engine(const std::vector<EngineInfo>& engines, const std::string& gpu,
                                const std::string& library_version, const std::string& precision,
                                std::string* why_not);

}  // namespace clap_edge
