// clap-edge native runtime: classify images with a clap-edge bundle, with the same answers as the Python runtime.
//
//   auto clf = clap_edge::Classifier::open("bundle", "openvino");
//   for (const auto& p : clf.predict({"cat.jpg", "dog.png"}, 3)) std::cout << p.labels[0] << "\n";
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "clap_edge/bundle.hpp"
#include "clap_edge/errors.hpp"
#include "clap_edge/image.hpp"

namespace clap_edge {

struct Options {
  std::string device = "CPU";       // OpenVINO device (CPU, GPU, ...); CUDA device index for TensorRT ("0")
  std::string precision = "auto";   // openvino: auto | fp32 | bf16 | fp16 | int8 (the openvino-int8 IR variant)
                                    // tensorrt: auto | fp32 | fp16 | int8 (picks the engine of that precision)
  int threads = 0;                  // inference threads (0: the library's default)
  int workers = 2;                  // decode / preprocess threads
};

struct Prediction {
  std::string path;                 // "" for images not read from a file
  std::vector<std::string> labels;  // top-k, best first
  std::vector<float> scores;        // softmax probabilities over all classes, for the top-k labels
  std::vector<float> embedding;     // [embed_dim]
  std::vector<float> logits;        // [n_classes]
};

// The outputs of one batch: the model's embedding and the logits the class matrix gives (schema 4).
struct BatchOutput {
  int64_t n = 0;
  std::vector<float> logits;     // [n, n_classes] (Classifier::infer fills them; backends give the embedding)
  std::vector<float> embedding;  // [n, embed_dim]
};

// The result of one file in predict_files: a prediction, or the one-line error naming the file.
struct FileResult {
  std::string path;
  bool ok = false;
  Prediction prediction;
  std::string error;  // ImageError message ("<path>: <problem>") when !ok
};

class Backend;

class Classifier {
 public:
  // Open and verify the bundle directory, load backend ("auto", "openvino", "tensorrt") and probe it once.
  static Classifier open(const std::string& bundle_dir, const std::string& backend = "auto",
                         const Options& options = {});

  Classifier(Classifier&&) noexcept;
  Classifier& operator=(Classifier&&) noexcept;
  ~Classifier();

  // Predictions for image files (decoded, preprocessed in `workers` threads, batched). Throws ImageError
  // on a broken file; use predict_files to report broken files and go on. Thread-safe.
  std::vector<Prediction> predict(const std::vector<std::string>& paths, int top_k = 5, int batch_size = 32) const;
  // Predictions for decoded RGB images. Thread-safe.
  std::vector<Prediction> predict(const std::vector<Image>& images, int top_k = 5, int batch_size = 32) const;
  // Predictions for a preprocessed float32 batch [n, 3, H, W] (contiguous). Thread-safe.
  std::vector<Prediction> predict_batch(const float* batch, int64_t n, int top_k = 5) const;
  // The raw outputs for a preprocessed batch. Thread-safe.
  BatchOutput infer(const float* batch, int64_t n) const;

  // Files in input order, each a prediction or its error; decoding of the next batch overlaps inference.
  void predict_files(const std::vector<std::string>& paths, int batch_size, int top_k,
                     const std::function<void(const FileResult&)>& on_result) const;

  // Decode a file the way predict does (JPEG draft scaling at twice the model input) / preprocess it.
  Image load(const std::string& path) const;
  std::vector<float> preprocess(const Image& image) const;
  std::vector<float> preprocess(const std::string& path) const { return preprocess(load(path)); }

  const Bundle& bundle() const;
  const std::vector<std::string>& class_names() const;
  int input_height() const;
  int input_width() const;
  std::string backend_name() const;
  std::string precision() const;  // what the backend actually runs (e.g. fp32, bf16)
  std::string library_version() const;  // the backend library's version
  const Options& options() const;

 private:
  Classifier();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Row-wise softmax in double (max subtracted), as runtime/classifier.py's softmax.
std::vector<float> softmax(const float* logits, int64_t n, int64_t classes);

// JPEGs are decoded at a DCT scale that keeps at least this many times the model input (runtime/classifier.py).
constexpr int kDraftOversample = 2;

}  // namespace clap_edge
