// clap-edge-classify: classify image files and folders with a bundle; the same output lines, error lines and
// exit codes as `clap-edge classify` (0: all classified, 1: some images could not be decoded, 2: bad input).
#include <cstdio>
#include <iostream>
#include <sys/stat.h>

#include "clap_edge/classifier.hpp"
#include "common.hpp"
#include "json_line.hpp"

using namespace clap_edge;
using namespace clap_edge::tools;

namespace {

const char* const kUsage = "Usage: clap-edge-classify [OPTIONS] BUNDLE PATHS...";

const char* const kHelp = R"(Usage: clap-edge-classify [OPTIONS] BUNDLE PATHS...

  Classify images (files, or folders walked recursively) with BUNDLE.

  Exit code 0 when every image was classified, 1 when some could not be (each is reported with
  the reason: undecodable, too large, missing, broken link, symlink loop, not a regular file;
  the others are still classified), 2 for a bad bundle or bad arguments. Folders are walked as
  `clap-edge classify` walks them. Decodes JPEG and PNG files. Text output escapes control
  characters in paths and labels (\n, \t, \x1b); --json output is exact.

Options:
  --backend TEXT         auto, openvino, tensorrt (when built with it)  [default: auto]
  --precision TEXT       auto, fp32, bf16, fp16, int8  [default: auto]
  --device TEXT          OpenVINO device, or CUDA device index for tensorrt  [default: CPU]
  --batch-size INTEGER   images per model call  [default: 32]
  --top-k INTEGER        classes reported per image (at most the bundle's class count)  [default: 5]
  --threads INTEGER      inference threads (default: library's)
  --workers INTEGER      decode / preprocess threads  [default: 2]
  --json                 one JSON object per line: {"path","labels","scores"} or {"path","error"}
  -h, --help             Show this message and exit.

  Example:
    clap-edge-classify bundle/ photos/ extra.jpg --top-k 3 --json
)";

void report(const Prediction& p, bool as_json) {
  if (as_json) {
    std::cout << "{\"path\": " << json_string(p.path) << ", \"labels\": " << json_string_list(p.labels)
              << ", \"scores\": " << json_number_list(p.scores) << "}\n";
  } else {
    std::cout << escape_text(p.path) << "\t";
    char buf[64];
    for (size_t i = 0; i < p.labels.size(); ++i) {
      std::snprintf(buf, sizeof buf, "%.3f", double(p.scores[i]));
      std::cout << (i ? ", " : "") << escape_text(p.labels[i]) << " " << buf;
    }
    std::cout << "\n";
  }
}

void report_error(const std::string& path, std::string message, bool as_json) {
  if (message.rfind(path + ": ", 0) == 0) message = message.substr(path.size() + 2);  // the record has the path
  if (as_json) {
    std::cout << "{\"path\": " << json_string(path) << ", \"error\": " << json_string(message) << "}\n";
  } else {
    std::cout.flush();
    std::cerr << escape_text(path) << "\terror: " << escape_text(message) << std::endl;
  }
}

bool exists(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0;
}

std::string joined(const std::vector<std::string>& items) {
  std::string list;
  for (const auto& a : items) list += (list.empty() ? "" : ", ") + a;
  return list;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string backend = "auto";
  Options options;
  int batch_size = 32, top_k = 5;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(kUsage, "Option '" + a + "' requires an argument.");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") { std::cout << kHelp; return 0; }
    else if (a == "--json") as_json = true;
    else if (a == "--backend") backend = value();
    else if (a == "--precision") options.precision = value();
    else if (a == "--device") options.device = value();
    else if (a == "--batch-size") batch_size = parse_int(a, value(), 1);
    else if (a == "--top-k") top_k = parse_int(a, value(), 1);
    else if (a == "--threads") options.threads = parse_int(a, value(), 1);
    else if (a == "--workers") options.workers = parse_int(a, value(), 1);
    else if (a.rfind("--", 0) == 0) usage_error(kUsage, "No such option: " + a);
    else positional.push_back(a);
  }
  if (positional.empty()) usage_error(kUsage, "Missing argument 'BUNDLE'.");
  if (positional.size() < 2) usage_error(kUsage, "Missing argument 'PATHS...'.");
  // Only BUNDLE must exist (click.Path(exists=True)); a missing PATH is that path's error record, as in Python.
  if (!exists(positional[0]))
    usage_error(kUsage, "Invalid value for 'BUNDLE': Path '" + positional[0] + "' does not exist.");
  const std::vector<std::string> args(positional.begin() + 1, positional.end());
  const ScanResult scan = scan_images(args);
  if (scan.files.empty() && scan.skipped.empty()) fail("no image files found under " + joined(args));
  size_t failed = 0;
  try {
    const Classifier clf = Classifier::open(positional[0], backend, options);
    for (const auto& s : scan.skipped) {  // reported first, then the images: none is lost without a word
      ++failed;
      report_error(s.path, s.reason, as_json);
    }
    clf.predict_files(scan.files, batch_size, top_k, [&](const FileResult& r) {
      if (r.ok) {
        report(r.prediction, as_json);
      } else {
        ++failed;
        report_error(r.path, r.error, as_json);
      }
    });
  } catch (const Error& e) {
    std::cout.flush();
    fail(e.what());
  }
  std::cout.flush();
  if (!scan.other_files.empty())
    std::cerr << "note: " << scan.other_files.size() << " file(s) without an image extension were not read (e.g. "
              << escape_text(scan.other_files[0]) << "); name a file directly to classify it" << std::endl;
  if (failed) {
    std::cerr << failed << " of " << scan.files.size() + scan.skipped.size() << " images could not be classified"
              << std::endl;
    return 1;
  }
  return 0;
}
