// Classifier: a verified bundle + a backend + preprocessing that matches the Python runtime.
#include "clap_edge/classifier.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <future>
#include <numeric>
#include <thread>

#include "backend.hpp"

namespace clap_edge {

struct Classifier::Impl {
  std::shared_ptr<Bundle> bundle;
  std::unique_ptr<Backend> backend;
  Options options;
  PreprocessConfig cfg;
  DecodeOptions decode;
};

namespace {

// Run f(i) for i in [0, n) on `workers` threads (the caller's thread is one of them).
template <typename F>
void parallel_for(size_t n, int workers, F f) {
  std::atomic<size_t> next{0};
  auto loop = [&] {
    for (size_t i = next++; i < n; i = next++) f(i);
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < std::min<int>(workers, int(n)); ++t) threads.emplace_back(loop);
  loop();
  for (auto& t : threads) t.join();
}

// A chunk of files decoded and preprocessed: the good ones stacked into one batch, the broken ones' errors.
struct Prepared {
  std::vector<float> batch;
  std::vector<size_t> good;                // indices into the chunk, in order
  std::vector<std::string> errors;         // per chunk index; "" when decoded
};

}  // namespace

Classifier::Classifier() : impl_(std::make_unique<Impl>()) {}
Classifier::Classifier(Classifier&&) noexcept = default;
Classifier& Classifier::operator=(Classifier&&) noexcept = default;
Classifier::~Classifier() = default;

Classifier Classifier::open(const std::string& bundle_dir, const std::string& backend, const Options& options) {
  Classifier clf;
  Impl& s = *clf.impl_;
  s.options = options;
  s.bundle = Bundle::open(bundle_dir);
  const Manifest& m = s.bundle->manifest();
  s.cfg = m.preprocess;
  const int draft = kDraftOversample * std::max(s.cfg.height, s.cfg.width);
  s.decode.draft_width = s.decode.draft_height = draft;
  std::string name = backend;
  if (name == "auto") name = tensorrt_available() && !m.engines.empty() ? "tensorrt" : "openvino";
  if (name == "openvino") s.backend = make_openvino_backend(*s.bundle, options);
  else if (name == "tensorrt") s.backend = make_tensorrt_backend(*s.bundle, options);
  else throw Error("unknown backend '" + backend + "' (this build has: openvino" +
                   std::string(tensorrt_available() ? ", tensorrt" : "") + ")");
  // One tiny inference: the model must give a [1, d] embedding, as the manifest says.
  std::vector<float> zeros(size_t(3) * s.cfg.height * s.cfg.width, 0.0f);
  const BatchOutput out = s.backend->infer(zeros.data(), 1, s.cfg.height, s.cfg.width);
  if (out.embedding.size() != size_t(m.embed_dim))
    throw BundleError(bundle_dir + ": the " + name + " model gives " + std::to_string(out.embedding.size()) +
                      " embedding values for one image; the manifest implies " + std::to_string(m.embed_dim));
  return clf;
}

const Bundle& Classifier::bundle() const { return *impl_->bundle; }
const std::vector<std::string>& Classifier::class_names() const { return impl_->bundle->manifest().class_names; }
int Classifier::input_height() const { return impl_->cfg.height; }
int Classifier::input_width() const { return impl_->cfg.width; }
std::string Classifier::backend_name() const { return impl_->backend->name(); }
std::string Classifier::precision() const { return impl_->backend->precision(); }
std::string Classifier::library_version() const { return impl_->backend->library_version(); }
const Options& Classifier::options() const { return impl_->options; }

Image Classifier::load(const std::string& path) const { return load_image(path, impl_->decode); }

std::vector<float> Classifier::preprocess(const Image& image) const {
  std::vector<float> out(size_t(3) * impl_->cfg.height * impl_->cfg.width);
  clap_edge::preprocess(image, impl_->cfg, out.data());
  return out;
}

BatchOutput Classifier::infer(const float* batch, int64_t n) const {
  if (n < 1) return BatchOutput{};
  BatchOutput out = impl_->backend->infer(batch, n, impl_->cfg.height, impl_->cfg.width);
  // Schema 4: classes are data. logits = logit_scale * embedding @ W.T + b, in float32 as runtime/backends/base.py.
  const Bundle& b = *impl_->bundle;
  const auto& W = b.class_matrix();
  const auto& bias = b.class_bias();
  const size_t C = b.manifest().class_names.size(), D = size_t(b.manifest().embed_dim);
  const float scale = float(b.manifest().logit_scale);
  out.logits.assign(size_t(n) * C, 0.0f);
  std::vector<float> scaled(D);
  for (int64_t r = 0; r < n; ++r) {
    const float* e = out.embedding.data() + size_t(r) * D;
    for (size_t k = 0; k < D; ++k) scaled[k] = scale * e[k];
    for (size_t c = 0; c < C; ++c) {
      const float* w = W.data() + c * D;
      double acc = 0;
      for (size_t k = 0; k < D; ++k) acc += double(scaled[k]) * double(w[k]);
      out.logits[size_t(r) * C + c] = float(acc) + (bias.empty() ? 0.0f : bias[c]);
    }
  }
  return out;
}

namespace {
// As Prediction.is_finite in runtime/classifier.py: every logit and score finite.
bool all_finite(const Prediction& p) {
  for (float v : p.logits) if (!std::isfinite(v)) return false;
  for (float v : p.scores) if (!std::isfinite(v)) return false;
  return true;
}
}  // namespace

std::vector<float> softmax(const float* logits, int64_t n, int64_t classes) {
  std::vector<float> out(size_t(n * classes));
  for (int64_t r = 0; r < n; ++r) {
    const float* z = logits + r * classes;
    const double mx = *std::max_element(z, z + classes);
    double sum = 0;
    std::vector<double> e(static_cast<size_t>(classes));
    for (int64_t c = 0; c < classes; ++c) sum += e[size_t(c)] = std::exp(double(z[c]) - mx);
    for (int64_t c = 0; c < classes; ++c) out[size_t(r * classes + c)] = float(e[size_t(c)] / sum);
  }
  return out;
}

std::vector<Prediction> Classifier::predict_batch(const float* batch, int64_t n, int top_k) const {
  if (top_k < 1) throw Error("top_k must be >= 1, got " + std::to_string(top_k));
  const BatchOutput out = infer(batch, n);
  const auto& names = class_names();
  const int64_t C = int64_t(names.size()), D = impl_->bundle->manifest().embed_dim;
  const std::vector<float> probs = softmax(out.logits.data(), n, C);
  const int k = int(std::min<int64_t>(top_k, C));
  std::vector<Prediction> preds(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const float* p = probs.data() + r * C;
    std::vector<int> order(static_cast<size_t>(C));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [p](int a, int b) { return p[a] > p[b]; });  // ties: lower index
    Prediction& pred = preds[size_t(r)];
    for (int j = 0; j < k; ++j) {
      pred.labels.push_back(names[size_t(order[size_t(j)])]);
      pred.scores.push_back(p[order[size_t(j)]]);
    }
    pred.logits.assign(out.logits.begin() + r * C, out.logits.begin() + (r + 1) * C);
    pred.embedding.assign(out.embedding.begin() + r * D, out.embedding.begin() + (r + 1) * D);
  }
  return preds;
}

std::vector<Prediction> Classifier::predict(const std::vector<Image>& images, int top_k, int batch_size) const {
  if (batch_size < 1) throw Error("batch_size must be >= 1");
  const size_t pixels = size_t(3) * impl_->cfg.height * impl_->cfg.width;
  std::vector<Prediction> results;
  for (size_t start = 0; start < images.size(); start += size_t(batch_size)) {
    const size_t n = std::min(images.size() - start, size_t(batch_size));
    std::vector<float> batch(n * pixels);
    parallel_for(n, impl_->options.workers, [&](size_t i) {
      clap_edge::preprocess(images[start + i], impl_->cfg, batch.data() + i * pixels);
    });
    auto preds = predict_batch(batch.data(), int64_t(n), top_k);
    results.insert(results.end(), std::make_move_iterator(preds.begin()), std::make_move_iterator(preds.end()));
  }
  return results;
}

std::vector<Prediction> Classifier::predict(const std::vector<std::string>& paths, int top_k, int batch_size) const {
  std::vector<Prediction> results;
  std::string first_error;
  predict_files(paths, batch_size, top_k, [&](const FileResult& r) {
    if (!r.ok && first_error.empty()) first_error = r.error;
    if (r.ok) results.push_back(r.prediction);
  });
  if (!first_error.empty()) throw ImageError(first_error);
  return results;
}

void Classifier::predict_files(const std::vector<std::string>& paths, int batch_size, int top_k,
                               const std::function<void(const FileResult&)>& on_result) const {
  if (batch_size < 1) throw Error("batch_size must be >= 1");
  const size_t pixels = size_t(3) * impl_->cfg.height * impl_->cfg.width;
  auto prepare = [this, &paths, pixels](size_t start, size_t n) {
    Prepared p;
    p.errors.assign(n, "");
    p.batch.resize(n * pixels);  // each image straight into its slot; failed slots are closed up below
    parallel_for(n, impl_->options.workers, [&](size_t i) {
      try {
        const Image img = load(paths[start + i]);  // its errors name the path
        try {
          clap_edge::preprocess(img, impl_->cfg, p.batch.data() + i * pixels);
        } catch (const ImageError& e) {  // the resize bound: no path in it
          throw ImageError(paths[start + i] + ": " + e.what());
        }
      } catch (const ImageError& e) {
        p.errors[i] = e.what();
      } catch (const std::exception& e) {  // an unexpected decoder failure still fails only this file
        p.errors[i] = paths[start + i] + ": cannot decode image: " + e.what();
      }
    });
    for (size_t i = 0; i < n; ++i)
      if (p.errors[i].empty()) p.good.push_back(i);
    for (size_t j = 0; j < p.good.size(); ++j)  // good[j] >= j: moving forward in place is safe
      if (p.good[j] != j)
        std::copy_n(p.batch.begin() + p.good[j] * pixels, pixels, p.batch.begin() + j * pixels);
    p.batch.resize(p.good.size() * pixels);
    return p;
  };
  const size_t bs = size_t(batch_size);
  std::future<Prepared> next;
  if (!paths.empty()) next = std::async(std::launch::async, prepare, 0, std::min(bs, paths.size()));
  for (size_t start = 0; start < paths.size(); start += bs) {
    Prepared cur = next.get();
    const size_t n = std::min(bs, paths.size() - start);
    // Decode the next batch while this one runs on the backend.
    if (start + bs < paths.size())
      next = std::async(std::launch::async, prepare, start + bs, std::min(bs, paths.size() - start - bs));
    std::vector<Prediction> preds;
    if (!cur.good.empty()) preds = predict_batch(cur.batch.data(), int64_t(cur.good.size()), top_k);
    size_t j = 0;
    for (size_t i = 0; i < n; ++i) {
      FileResult r;
      r.path = paths[start + i];
      if (cur.errors[i].empty() && !all_finite(preds[j])) {  // never print NaN scores: this image's error
        r.error = r.path + ": the model gave non-finite scores (NaN or inf) for this image";
        ++j;
      } else if (cur.errors[i].empty()) {
        r.ok = true;
        r.prediction = std::move(preds[j++]);
        r.prediction.path = r.path;
      } else {
        r.error = cur.errors[i];
      }
      on_result(r);
    }
  }
}

}  // namespace clap_edge
