// The C API (include/clap_edge/c_api.h) over the C++ Classifier: every entry point catches everything and turns
// it into a status and a per-thread last-error line.
#include "clap_edge/c_api.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>

#include "clap_edge/classifier.hpp"

struct clap_edge_classifier {
  clap_edge::Classifier clf;
  std::string backend, precision;
  std::unordered_map<std::string, size_t> index;  // class name -> position in class_names()
  explicit clap_edge_classifier(clap_edge::Classifier&& c) : clf(std::move(c)) {}
};

namespace {

thread_local std::string last_error;

clap_edge_status fail(clap_edge_status status, const std::string& message) {
  try {
    last_error = message;
  } catch (...) {  // no memory for the message: keep the status
    last_error.clear();
  }
  return status;
}

// Runs f, mapping each exception kind to its status. f returns CLAP_EDGE_OK or an argument error.
template <class F>
clap_edge_status guarded(F&& f) noexcept {
  try {
    last_error.clear();
    return f();
  } catch (const clap_edge::ImageError& e) {
    return fail(CLAP_EDGE_BAD_IMAGE, e.what());
  } catch (const clap_edge::BundleError& e) {
    return fail(CLAP_EDGE_BAD_BUNDLE, e.what());
  } catch (const std::bad_alloc&) {
    return fail(CLAP_EDGE_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(CLAP_EDGE_RUNTIME_ERROR, e.what());
  } catch (...) {
    return fail(CLAP_EDGE_RUNTIME_ERROR, "unknown error");
  }
}

}  // namespace

extern "C" {

const char* clap_edge_version(void) { return CLAP_EDGE_VERSION; }

const char* clap_edge_last_error(void) { return last_error.c_str(); }

void clap_edge_options_init(clap_edge_options* options) {
  if (!options) return;
  options->device = nullptr;
  options->precision = nullptr;
  options->threads = 0;
  options->workers = 0;
}

clap_edge_status clap_edge_classifier_open(const char* bundle_dir, const char* backend,
                                           const clap_edge_options* options, clap_edge_classifier** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    if (!bundle_dir || !out) return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_classifier_open: NULL argument");
    clap_edge::Options opt;
    if (options) {
      if (options->device) opt.device = options->device;
      if (options->precision) opt.precision = options->precision;
      if (options->threads < 0 || options->workers < 0)
        return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_classifier_open: threads and workers must be >= 0");
      opt.threads = options->threads;
      if (options->workers > 0) opt.workers = options->workers;
    }
    const std::string b = backend ? backend : "auto";
    if (b != "auto" && b != "openvino" && b != "tensorrt")
      return fail(CLAP_EDGE_INVALID_ARGUMENT, "backend '" + b + "' is not one of auto, openvino, tensorrt");
    auto handle = std::make_unique<clap_edge_classifier>(clap_edge::Classifier::open(bundle_dir, b, opt));
    handle->backend = handle->clf.backend_name();
    handle->precision = handle->clf.precision();
    const auto& names = handle->clf.class_names();
    for (size_t i = 0; i < names.size(); ++i) handle->index.emplace(names[i], i);
    *out = handle.release();
    return CLAP_EDGE_OK;
  });
}

void clap_edge_classifier_free(clap_edge_classifier* classifier) { delete classifier; }

size_t clap_edge_classifier_num_classes(const clap_edge_classifier* c) { return c ? c->clf.class_names().size() : 0; }

const char* clap_edge_classifier_class_name(const clap_edge_classifier* c, size_t i) {
  return c && i < c->clf.class_names().size() ? c->clf.class_names()[i].c_str() : nullptr;
}

const char* clap_edge_classifier_backend(const clap_edge_classifier* c) { return c ? c->backend.c_str() : nullptr; }
const char* clap_edge_classifier_precision(const clap_edge_classifier* c) { return c ? c->precision.c_str() : nullptr; }
int clap_edge_classifier_input_height(const clap_edge_classifier* c) { return c ? c->clf.input_height() : 0; }
int clap_edge_classifier_input_width(const clap_edge_classifier* c) { return c ? c->clf.input_width() : 0; }

clap_edge_status clap_edge_classify_file(const clap_edge_classifier* c, const char* path, size_t top_k,
                                         size_t* class_indices, float* scores, size_t* n_out) {
  if (n_out) *n_out = 0;
  return guarded([&] {
    if (!c || !path || !class_indices || !scores || !n_out)
      return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_classify_file: NULL argument");
    if (top_k == 0) return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_classify_file: top_k must be >= 1");
    const int k = int(std::min<size_t>(top_k, c->clf.class_names().size()));
    const auto preds = c->clf.predict(std::vector<std::string>{path}, k, 1);
    const auto& p = preds.at(0);
    for (size_t i = 0; i < p.labels.size(); ++i) {
      class_indices[i] = c->index.at(p.labels[i]);
      scores[i] = p.scores[i];
    }
    *n_out = p.labels.size();
    return CLAP_EDGE_OK;
  });
}

clap_edge_status clap_edge_infer(const clap_edge_classifier* c, const float* batch, size_t n, float* logits,
                                 size_t logits_len) {
  return guarded([&] {
    if (!c || !batch || !logits) return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_infer: NULL argument");
    if (n == 0) return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_infer: n must be >= 1");
    const size_t classes = c->clf.class_names().size();
    if (logits_len < n * classes)
      return fail(CLAP_EDGE_INVALID_ARGUMENT, "clap_edge_infer: logits_len " + std::to_string(logits_len) +
                                                  " < n * num_classes = " + std::to_string(n * classes));
    const auto out = c->clf.infer(batch, int64_t(n));
    std::copy(out.logits.begin(), out.logits.begin() + std::ptrdiff_t(n * classes), logits);
    return CLAP_EDGE_OK;
  });
}

}  // extern "C"
