// The backend interface inside the runtime: a loaded model that maps a preprocessed batch to its outputs.
#pragma once

#include <memory>
#include <string>

#include "clap_edge/classifier.hpp"

namespace clap_edge {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual std::string precision() const = 0;  // what actually runs (fp32, bf16, fp16, int8)
  virtual std::string library_version() const = 0;
  // Outputs of a contiguous float32 batch [n, 3, H, W]. Must be safe to call from several threads at once.
  virtual BatchOutput infer(const float* batch, int64_t n, int height, int width) = 0;
};

std::unique_ptr<Backend> make_openvino_backend(const Bundle& bundle, const Options& options);
bool tensorrt_available();  // compiled with TensorRT
std::unique_ptr<Backend> make_tensorrt_backend(const Bundle& bundle, const Options& options);
// What backend "auto" resolves to on this machine (engines.hpp auto_backend with this GPU and TensorRT).
std::string auto_backend_here(const Bundle& bundle, const Options& options);

}  // namespace clap_edge
