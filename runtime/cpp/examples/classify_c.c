/* The C API from C: classify image files with a bundle, print "<path>\t<label> <score>" per image (top 3).
 * Exit codes as clap-edge-classify: 0 all classified, 1 some image could not be, 2 bad bundle / arguments.
 *
 *   classify_c bundle/ cat.jpg dog.png
 */
#include <stdio.h>

#include "clap_edge/c_api.h"

int main(int argc, char** argv) {
  clap_edge_classifier* clf = NULL;
  clap_edge_options options;
  size_t idx[3], k = 0;
  float score[3];
  int i, failed = 0;
  if (argc < 3) {
    fprintf(stderr, "usage: %s BUNDLE IMAGE...\n", argv[0]);
    return 2;
  }
  clap_edge_options_init(&options);
  options.precision = "fp32";
  if (clap_edge_classifier_open(argv[1], "auto", &options, &clf) != CLAP_EDGE_OK) {
    fprintf(stderr, "error: %s\n", clap_edge_last_error());
    return 2;
  }
  printf("# clap-edge %s, backend %s, %zu classes\n", clap_edge_version(), clap_edge_classifier_backend(clf),
         clap_edge_classifier_num_classes(clf));
  for (i = 2; i < argc; ++i) {
    const clap_edge_status s = clap_edge_classify_file(clf, argv[i], 3, idx, score, &k);
    if (s != CLAP_EDGE_OK) {
      printf("%s\terror %d: %s\n", argv[i], (int)s, clap_edge_last_error());
      ++failed;
      continue;
    }
    printf("%s\t%s %.6f\n", argv[i], clap_edge_classifier_class_name(clf, idx[0]), (double)score[0]);
  }
  clap_edge_classifier_free(clf);
  return failed ? 1 : 0;
}
