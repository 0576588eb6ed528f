/* clap-edge native runtime: C API (C99), for embedding from C, Go (cgo), Rust, Swift, ...
 *
 *   clap_edge_classifier* clf = NULL;
 *   if (clap_edge_classifier_open("bundle", "auto", NULL, &clf) != CLAP_EDGE_OK) {
 *     fprintf(stderr, "error: %s\n", clap_edge_last_error());
 *     return 2;
 *   }
 *   size_t idx[3]; float score[3]; size_t k = 0;
 *   if (clap_edge_classify_file(clf, "cat.jpg", 3, idx, score, &k) == CLAP_EDGE_OK)
 *     printf("%s %.3f\n", clap_edge_classifier_class_name(clf, idx[0]), score[0]);
 *   clap_edge_classifier_free(clf);
 *
 * Errors: every function that can fail returns a clap_edge_status; CLAP_EDGE_OK is 0. On failure,
 * clap_edge_last_error() gives the one-line message (naming the file and the problem, as the C++ and Python
 * runtimes do). No C++ exception crosses this boundary.
 *
 * Ownership: a handle from clap_edge_classifier_open belongs to the caller, who frees it with
 * clap_edge_classifier_free (NULL is allowed). Every output array is the caller's, of the length it passes.
 * Strings returned as `const char*` belong to the library: clap_edge_last_error()'s until the next call on the
 * same thread; a class name / backend name / precision until the classifier is freed; the version forever.
 *
 * Threads: a classifier may be used from several threads at once; the last error is per thread.
 */
#ifndef CLAP_EDGE_C_API_H
#define CLAP_EDGE_C_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum clap_edge_status {
  CLAP_EDGE_OK = 0,
  CLAP_EDGE_INVALID_ARGUMENT = 1, /* a NULL pointer, an unknown backend / precision, top_k 0, ... */
  CLAP_EDGE_BAD_BUNDLE = 2,       /* the bundle cannot be used (missing / malformed / modified files) */
  CLAP_EDGE_BAD_IMAGE = 3,        /* the image cannot be decoded (missing, truncated, not an image, too large) */
  CLAP_EDGE_RUNTIME_ERROR = 4,    /* anything else the runtime or the inference library reported */
  CLAP_EDGE_OUT_OF_MEMORY = 5
} clap_edge_status;

typedef struct clap_edge_classifier clap_edge_classifier; /* opaque */

typedef struct clap_edge_options {
  const char* device;    /* OpenVINO device ("CPU"), or the CUDA device index for TensorRT ("0"); NULL: "CPU" */
  const char* precision; /* auto | fp32 | bf16 | fp16 | int8; NULL: "auto" */
  int threads;           /* inference threads; 0: the library's default */
  int workers;           /* decode / preprocess threads; 0: 2 */
} clap_edge_options;

/* The library version ("0.2.0"). */
const char* clap_edge_version(void);

/* The message of the last failed call on this thread ("" when none). */
const char* clap_edge_last_error(void);

/* Fill options with the defaults (as a NULL options pointer gives). */
void clap_edge_options_init(clap_edge_options* options);

/* Open and verify a bundle directory, load the backend ("auto", "openvino" or "tensorrt"; NULL: "auto").
 * options may be NULL. On success *out is a new handle; on failure *out is NULL. */
clap_edge_status clap_edge_classifier_open(const char* bundle_dir, const char* backend,
                                           const clap_edge_options* options, clap_edge_classifier** out);

/* Free a handle (NULL: nothing happens). */
void clap_edge_classifier_free(clap_edge_classifier* classifier);

/* The number of classes, and class i's name (NULL when i is out of range). */
size_t clap_edge_classifier_num_classes(const clap_edge_classifier* classifier);
const char* clap_edge_classifier_class_name(const clap_edge_classifier* classifier, size_t i);

/* The backend in use ("openvino" / "tensorrt") and the precision it runs. */
const char* clap_edge_classifier_backend(const clap_edge_classifier* classifier);
const char* clap_edge_classifier_precision(const clap_edge_classifier* classifier);

/* The model input: a preprocessed image is 3 x height x width float32. */
int clap_edge_classifier_input_height(const clap_edge_classifier* classifier);
int clap_edge_classifier_input_width(const clap_edge_classifier* classifier);

/* Classify one JPEG or PNG file: the top_k classes, best first, as class indices and softmax scores written to
 * the caller's arrays (each of length >= top_k); *n_out is min(top_k, number of classes). */
clap_edge_status clap_edge_classify_file(const clap_edge_classifier* classifier, const char* path, size_t top_k,
                                         size_t* class_indices, float* scores, size_t* n_out);

/* Raw logits of a preprocessed batch: batch is n x 3 x height x width float32 (contiguous), logits receives
 * n x num_classes floats (logits_len must be at least that). */
clap_edge_status clap_edge_infer(const clap_edge_classifier* classifier, const float* batch, size_t n, float* logits,
                                 size_t logits_len);

#ifdef __cplusplus
}
#endif

#endif /* CLAP_EDGE_C_API_H */
