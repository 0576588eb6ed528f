// Choosing a compiled engine from a bundle's `engines` section: each engine has a JSON sidecar naming the GPU,
// the library version, the precision and the batch profile it was built for; an engine runs only there.
#pragma once

#include <string>
#include <vector>

#include "clap_edge/bundle.hpp"

namespace clap_edge {

struct EngineInfo {
  std::string name, file;
  std::string kind;             // the sidecar's "engine": tensorrt | aoti ("" in sidecars that predate it)
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

// The engine built for this GPU (exact name) and library version (as export/bundle/engines.py same_version), of `precision` ("auto": fp16, then fp32, then int8,
// then any); nullptr when none fits, with the reasons in *why_not.
const EngineInfo* select_engine(const std::vector<EngineInfo>& engines, const std::string& gpu,
                                const std::string& library_version, const std::string& precision,
                                std::string* why_not);

// The CUDA device index Options::device names: "0", "1", ... ("CPU", the default, is device 0). Throws Error with
// one line for anything else (std::stoi would throw std::invalid_argument or accept "1abc").
int cuda_device_index(const std::string& device);

// The bundle's TensorRT engines whose sidecars are valid and that are neither stale nor swapped (they may run on
// the GPU they were built for); the reasons for the others in *refused. Reads (and sha256-checks) the sidecars.
std::vector<EngineInfo> runnable_tensorrt_engines(const Bundle& bundle, std::string* refused);

// The backend "auto" runs, as the Python runtime decides: "tensorrt" when this build has TensorRT and an engine
// of the bundle fits this GPU (gpu: its name, "" when none is visible), TensorRT version and precision; else
// "openvino". Never an engine built for another GPU or library, never an AOTInductor one, never a stale one.
std::string auto_backend(const Bundle& bundle, bool tensorrt_built, const std::string& gpu,
                         const std::string& library_version, const std::string& precision);

}  // namespace clap_edge
