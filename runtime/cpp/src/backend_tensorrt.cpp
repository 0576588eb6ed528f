// TensorRT backend (TensorRT 10 C++ API), compiled only when CMake finds TensorRT and CUDA.
// Loads the engine of the bundle's `engines` section whose sidecar matches this GPU, TensorRT version and the
// requested precision (sha256-checked, deserialized from the checked bytes), and runs it with one execution
// context per concurrent caller: setInputShape / setTensorAddress / enqueueV3 on the context's own stream.
#include "backend.hpp"
#include "engines.hpp"

#ifdef CLAP_EDGE_WITH_TENSORRT
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <iostream>
#include <mutex>
#include <vector>

namespace clap_edge {
namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) std::cerr << "TensorRT: " << msg << "\n";
  }
};

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

std::string trt_version() {
  const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch (TensorRT 10)
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

struct Context {
  std::unique_ptr<nvinfer1::IExecutionContext> ctx;
  cudaStream_t stream = nullptr;
  void* d_input = nullptr;
  void* d_embedding = nullptr;
  ~Context() {
    cudaFree(d_input);
    cudaFree(d_embedding);
    if (stream) cudaStreamDestroy(stream);
  }
};

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const Bundle& bundle, const Options& options) {
    const Manifest& m = bundle.manifest();
    device_ = options.device == "CPU" ? 0 : std::stoi(options.device);
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    std::vector<EngineInfo> infos;
    std::string refused;  // stale or swapped engines: never run, on any GPU (as the Python selection)
    for (const auto& e : m.engines) {
      if (e.sidecar.empty()) continue;
      const std::vector<char> text = bundle.read_file(e.sidecar);
      EngineInfo info = parse_engine_sidecar(std::string(text.begin(), text.end()), bundle.root() + "/" + e.sidecar);
      info.name = e.name;
      info.file = e.file;
      const std::string why = engine_unusable_reason(m, info, bundle.root());
      if (!why.empty()) {
        refused += (refused.empty() ? std::string() : std::string("; ")) + e.file + ": " + why;
        continue;
      }
      infos.push_back(info);
    }
    std::string why_not;
    const EngineInfo* chosen = select_engine(infos, prop.name, trt_version(), options.precision, &why_not);
    if (!chosen && !refused.empty()) why_not = infos.empty() ? refused : refused + "; " + why_not;
    if (!chosen)
      throw BundleError(bundle.root() + ": no TensorRT engine for " + prop.name + " with TensorRT " + trt_version() +
                        " (" + why_not + "); build one with the engines export step");
    info_ = *chosen;
    const std::vector<char> plan = bundle.read_file(info_.file);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) throw BundleError(bundle.root() + ": TensorRT cannot deserialize " + info_.file);
    input_ = m.input_name;
    classes_ = int64_t(m.class_names.size());
    dim_ = m.embed_dim;
    pixels_ = int64_t(3) * m.input_height * m.input_width;
  }

  std::string name() const override { return "tensorrt"; }
  std::string precision() const override { return info_.precision; }
  std::string library_version() const override { return trt_version(); }

  BatchOutput infer(const float* batch, int64_t n, int height, int width) override {
    std::unique_ptr<Context> c = acquire();
    BatchOutput out;
    out.n = n;
    out.embedding.resize(size_t(n * dim_));
    try {
      // The engine's profile bounds the batch: run larger batches in chunks of max_batch.
      for (int64_t start = 0; start < n; start += info_.max_batch) {
        const int64_t b = std::min<int64_t>(info_.max_batch, n - start);
        run(*c, batch + start * pixels_, b, height, width, out.embedding.data() + start * dim_);
      }
    } catch (...) {
      release(std::move(c));
      throw;
    }
    release(std::move(c));
    return out;
  }

 private:
  void run(Context& c, const float* in, int64_t b, int height, int width, float* embedding) {
    // Batches smaller than the profile minimum are padded with zeros (their outputs are dropped).
    const int64_t run_b = std::max<int64_t>(b, info_.min_batch);
    cuda_check(cudaMemsetAsync(c.d_input, 0, size_t(run_b * pixels_) * sizeof(float), c.stream), "cudaMemsetAsync");
    cuda_check(cudaMemcpyAsync(c.d_input, in, size_t(b * pixels_) * sizeof(float), cudaMemcpyHostToDevice, c.stream),
               "cudaMemcpyAsync");
    if (!c.ctx->setInputShape(input_.c_str(), nvinfer1::Dims4{run_b, 3, height, width}))
      throw Error("TensorRT rejected input shape [" + std::to_string(run_b) + ", 3, " + std::to_string(height) + ", " +
                  std::to_string(width) + "] for engine " + info_.file);
    c.ctx->setTensorAddress(input_.c_str(), c.d_input);
    c.ctx->setTensorAddress("embedding", c.d_embedding);
    if (!c.ctx->enqueueV3(c.stream)) throw Error("TensorRT enqueueV3 failed for engine " + info_.file);
    cuda_check(cudaMemcpyAsync(embedding, c.d_embedding, size_t(b * dim_) * sizeof(float), cudaMemcpyDeviceToHost,
                               c.stream), "cudaMemcpyAsync");
    cuda_check(cudaStreamSynchronize(c.stream), "cudaStreamSynchronize");
  }

  std::unique_ptr<Context> acquire() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    auto c = std::make_unique<Context>();
    c->ctx.reset(engine_->createExecutionContext());
    if (!c->ctx) throw Error("TensorRT cannot create an execution context for " + info_.file);
    cuda_check(cudaStreamCreate(&c->stream), "cudaStreamCreate");
    const size_t maxb = size_t(info_.max_batch);
    cuda_check(cudaMalloc(&c->d_input, maxb * pixels_ * sizeof(float)), "cudaMalloc");
    cuda_check(cudaMalloc(&c->d_embedding, maxb * dim_ * sizeof(float)), "cudaMalloc");
    return c;
  }
  void release(std::unique_ptr<Context> c) {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.push_back(std::move(c));
  }

  Logger logger_;
  int device_ = 0;
  EngineInfo info_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::string input_;
  int64_t classes_ = 0, dim_ = 0, pixels_ = 0;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Context>> idle_;
};

}  // namespace

bool tensorrt_available() { return true; }

std::unique_ptr<Backend> make_tensorrt_backend(const Bundle& bundle, const Options& options) {
  return std::make_unique<TensorRTBackend>(bundle, options);
}

}  // namespace clap_edge

#else  // built without TensorRT

namespace clap_edge {

bool tensorrt_available() { return false; }

std::unique_ptr<Backend> make_tensorrt_backend(const Bundle&, const Options&) {
  throw Error("backend 'tensorrt' is not in this build: TensorRT was not found when it was configured "
              "(configure with -DCLAP_EDGE_WITH_TENSORRT=ON and TensorRT 10 + CUDA installed)");
}

}  // namespace clap_edge
#endif
