// OpenVINO backend (C++ API): reads the bundle's model.onnx (or the openvino-int8 IR variant) after checking
// its sha256, compiles it for a device (CPU here) with the LATENCY hint, and keeps a pool of infer requests so
// that concurrent predict calls each run on their own request.
#include <openvino/openvino.hpp>

#include <mutex>
#include <vector>

#include "backend.hpp"

namespace clap_edge {
namespace {

std::string first_line(const std::string& s) {
  const auto start = s.find_first_not_of(" \n");
  if (start == std::string::npos) return s;
  return s.substr(start, s.find('\n', start) - start);
}

std::string precision_name(const ov::element::Type& t) {
  if (t == ov::element::f32) return "fp32";
  if (t == ov::element::bf16) return "bf16";
  if (t == ov::element::f16) return "fp16";
  return t.get_type_name();
}

// The model's image input must be the manifest's [N, 3, H, W] (a manifest that lies about it is refused here,
// not by an out-of-bounds read at inference time).
void check_input(const Bundle& bundle, const std::string& file, const ov::PartialShape& shape) {
  const Manifest& m = bundle.manifest();
  const int64_t want[] = {3, m.input_height, m.input_width};
  bool ok = shape.rank().is_static() && shape.rank().get_length() == 4;
  for (int i = 0; ok && i < 3; ++i) ok = shape[i + 1].is_dynamic() || shape[i + 1].get_length() == want[i];
  if (!ok)
    throw BundleError(bundle.root() + ": " + file + " declares 'image' with shape " + shape.to_string() +
                      ", the manifest says [N, 3, " + std::to_string(m.input_height) + ", " +
                      std::to_string(m.input_width) + "]");
}

class OpenVINOBackend : public Backend {
 public:
  OpenVINOBackend(const Bundle& bundle, const Options& options) {
    const Manifest& m = bundle.manifest();
    std::string file;
    bool int8 = options.precision == "int8";
    if (int8) {
      auto it = m.variants.find("openvino-int8");
      if (it == m.variants.end()) throw BundleError(bundle.root() + ": no 'openvino-int8' model in this bundle");
      file = it->second;
      const std::string weights = file.substr(0, file.rfind('.')) + ".bin";
      if (bundle.has_file(weights)) bundle.file(weights);  // the IR's weights are checked too
    } else {
      auto it = m.variants.find("fp32");
      // as Python: a bundle without an fp32 variant is refused, not silently run from a default file name
      if (it == m.variants.end()) throw BundleError(bundle.root() + ": no 'fp32' model in this bundle");
      file = it->second;
    }
    const std::string path = bundle.file(file);
    ov::AnyMap config{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    if (options.threads > 0) config.emplace(ov::inference_num_threads(options.threads));
    const std::string& p = options.precision;
    if (p == "fp32") config.emplace(ov::hint::inference_precision(ov::element::f32));
    else if (p == "bf16") config.emplace(ov::hint::inference_precision(ov::element::bf16));
    else if (p == "fp16") config.emplace(ov::hint::inference_precision(ov::element::f16));
    else if (p != "auto" && p != "int8")
      throw Error("openvino precision '" + p + "' is not one of auto, fp32, bf16, fp16, int8");
    try {
      ov::Core core;
      const auto model = core.read_model(path);
      check_input(bundle, file, model->input().get_partial_shape());
      compiled_ = core.compile_model(model, options.device, config);
    } catch (const BundleError&) {
      throw;
    } catch (const std::exception& e) {
      throw BundleError(bundle.root() + ": OpenVINO cannot load " + file + ": " + first_line(e.what()));
    }
    for (size_t i = 0; i < compiled_.outputs().size(); ++i) {
      const auto& names = compiled_.outputs()[i].get_names();
      if (names.count("embedding")) embedding_ = int(i);
    }
    if (embedding_ < 0) throw BundleError(bundle.root() + ": " + file + " does not have the output 'embedding'");
    try {
      precision_ = int8 ? "int8" : precision_name(compiled_.get_property(ov::hint::inference_precision));
    } catch (const std::exception&) {
      precision_ = "unknown";
    }
  }

  std::string name() const override { return "openvino"; }
  std::string precision() const override { return precision_; }
  std::string library_version() const override { return ov::get_openvino_version().buildNumber; }

  BatchOutput infer(const float* batch, int64_t n, int height, int width) override {
    ov::InferRequest request = acquire();
    BatchOutput out;
    out.n = n;
    try {
      ov::Tensor input(ov::element::f32, ov::Shape{size_t(n), 3, size_t(height), size_t(width)},
                       const_cast<float*>(batch));  // read only; no copy
      request.set_input_tensor(input);
      request.infer();
      copy(request.get_output_tensor(embedding_), out.embedding);
    } catch (...) {
      release(std::move(request));
      throw;
    }
    release(std::move(request));
    return out;
  }

 private:
  static void copy(const ov::Tensor& t, std::vector<float>& dst) {
    const float* p = t.data<const float>();
    dst.assign(p, p + t.get_size());
  }
  ov::InferRequest acquire() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        ov::InferRequest r = std::move(idle_.back());
        idle_.pop_back();
        return r;
      }
    }
    return compiled_.create_infer_request();  // thread-safe on a CompiledModel
  }
  void release(ov::InferRequest r) {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.push_back(std::move(r));
  }

  ov::CompiledModel compiled_;
  int embedding_ = -1;
  std::string precision_;
  std::mutex mutex_;
  std::vector<ov::InferRequest> idle_;
};

}  // namespace

std::unique_ptr<Backend> make_openvino_backend(const Bundle& bundle, const Options& options) {
  return std::make_unique<OpenVINOBackend>(bundle, options);
}

}  // namespace clap_edge
