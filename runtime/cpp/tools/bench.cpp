// clap-edge-bench: latency / throughput of the native runtime on one bundle, with the fields of
// `clap-edge bench` rows, plus end to end from image files (decode + preprocess + infer, pipelined) against
// the model alone on the same batches (paired, interleaved, one clock), with CPU time.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "clap_edge/classifier.hpp"
#include "common.hpp"

using namespace clap_edge;
using namespace clap_edge::tools;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kUsage = "Usage: clap-edge-bench [OPTIONS] BUNDLE";
const char* const kHelp = R"(Usage: clap-edge-bench [OPTIONS] BUNDLE

  Benchmark the native runtime on BUNDLE: per batch size, model-only latency percentiles and
  throughput and, with --end-to-end, batches of image files timed as files -> predictions (decode +
  preprocess + infer) and, interleaved, as the same batches' tensors through the model alone.

Options:
  --backend TEXT        openvino, tensorrt (when built with it)  [default: openvino]
  --precision TEXT      auto, fp32, bf16, fp16, int8  [default: auto]
  --batch-sizes TEXT    comma-separated batch sizes  [default: 1,8,32]
  --threads INTEGER     inference threads  [default: 1]
  --workers INTEGER     decode / preprocess threads for --end-to-end  [default: 2]
  --warmup INTEGER      untimed calls per batch size  [default: 3]
  --iters INTEGER       timed calls per batch size  [default: 20]
  --end-to-end DIR      also time files -> predictions from the images in DIR
  --json [PATH]         write the report as JSON to PATH (or stdout without PATH)
  -h, --help            Show this message and exit.

  Example:
    clap-edge-bench bundle/ --batch-sizes 1,32 --end-to-end photos/ --json bench.json
)";

double r(double v, int digits) {
  const double s = std::pow(10.0, digits);
  return std::round(v * s) / s;
}

// numpy.percentile's default (linear interpolation between closest ranks).
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return r(std::stod(line.substr(6)) / 1024.0, 1);
  return -1;
}

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// CPU seconds of this process (all threads: the inference and decode workers too).
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

namespace {
int run(int argc, char** argv) {
  std::string bundle_dir, backend = "openvino", end_to_end, json_path;
  bool want_json = false;
  Options options;
  options.threads = 1;
  std::vector<int> batch_sizes{1, 8, 32};
  int warmup = 3, iters = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(kUsage, "Option '" + a + "' requires an argument.");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") { std::cout << kHelp; return 0; }
    else if (a == "--json") {
      want_json = true;
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0 && !bundle_dir.empty()) json_path = argv[++i];
    }
    else if (a == "--backend") backend = value();
    else if (a == "--precision") options.precision = value();
    else if (a == "--batch-sizes") batch_sizes = parse_int_list(a, value());
    else if (a == "--threads") options.threads = parse_int(a, value(), 1);
    else if (a == "--workers") options.workers = parse_int(a, value(), 1);
    else if (a == "--warmup") warmup = parse_int(a, value(), 0);
    else if (a == "--iters") iters = parse_int(a, value(), 1);
    else if (a == "--end-to-end") end_to_end = value();
    else if (a.rfind("--", 0) == 0) usage_error(kUsage, "No such option: " + a);
    else if (bundle_dir.empty()) bundle_dir = a;
    else usage_error(kUsage, "Got unexpected extra argument (" + a + ")");
  }
  if (bundle_dir.empty()) usage_error(kUsage, "Missing argument 'BUNDLE'.");
  try {
    const auto load_start = Clock::now();
    const Classifier clf = Classifier::open(bundle_dir, backend, options);
    const double load_s = seconds_since(load_start);
    const int H = clf.input_height(), W = clf.input_width();
    const size_t pixels = size_t(3) * H * W;
    std::vector<std::string> files;
    if (!end_to_end.empty()) {
      files = list_images({end_to_end});
      if (files.empty()) fail(end_to_end + ": no image files found");
    }
    json results = json::array();
    for (int bs : batch_sizes) {
      reset_peak_rss();
      std::mt19937 rng(static_cast<unsigned>(bs));
      std::normal_distribution<float> normal;
      std::vector<float> x(pixels * size_t(bs));
      for (auto& v : x) v = normal(rng);
      for (int i = 0; i < warmup; ++i) clf.infer(x.data(), bs);
      std::vector<double> ms;
      for (int i = 0; i < iters; ++i) {
        const auto t = Clock::now();
        clf.infer(x.data(), bs);
        ms.push_back(seconds_since(t) * 1000.0);
      }
      double sum = 0;
      for (double v : ms) sum += v;
      const double ips = bs * double(ms.size()) / (sum / 1000.0);
      results.push_back({{"backend", clf.backend_name()}, {"runtime", "native"}, {"mode", "model"},
                         {"batch_size", bs}, {"threads", options.threads}, {"precision", clf.precision()},
                         {"p50_ms", r(percentile(ms, 50), 3)}, {"p90_ms", r(percentile(ms, 90), 3)},
                         {"p99_ms", r(percentile(ms, 99), 3)}, {"mean_ms", r(sum / ms.size(), 3)},
                         {"images_per_s", r(ips, 2)}, {"peak_rss_mb", peak_rss_mb()}, {"iters", ms.size()}});
      std::cerr << "model     batch " << bs << ": p50 " << r(percentile(ms, 50), 1) << " ms, " << r(ips, 2)
                << " images/s\n";
    }
    if (!files.empty()) {
      // End to end against model only, paired: each timed batch is `bs` image files (the readable ones of DIR,
      // cycled); the same batch is timed both as files -> predictions (decode + preprocess in `workers` threads,
      // infer, top-k: Classifier::predict) and as its preprocessed tensor through the same infer (prepared
      // untimed), with the same clock, alternating which goes first. The overhead per batch is their difference.
      std::vector<std::string> good;
      size_t failed = 0;
      for (const auto& f : files) {
        try {
          clf.preprocess(f);
          good.push_back(f);
        } catch (const ImageError&) {
          ++failed;  // counted, never timed
        }
      }
      if (good.empty()) fail(end_to_end + ": no image file could be decoded");
      for (int bs : batch_sizes) {
        std::vector<double> e2e_ms, model_ms;
        double e2e_cpu = 0, model_cpu = 0;
        std::vector<float> x(pixels * size_t(bs));
        size_t next = 0;
        for (int i = -std::max(warmup, 1); i < iters; ++i) {  // negative i: untimed warm-up
          std::vector<std::string> paths;
          for (int k = 0; k < bs; ++k) paths.push_back(good[next++ % good.size()]);
          for (int k = 0; k < bs; ++k) {
            const std::vector<float> t = clf.preprocess(paths[size_t(k)]);
            std::copy(t.begin(), t.end(), x.begin() + std::ptrdiff_t(size_t(k) * pixels));
          }
          auto time_e2e = [&] {
            const double c = cpu_seconds();
            const auto t = Clock::now();
            clf.predict(paths, 1, bs);
            if (i >= 0) e2e_ms.push_back(seconds_since(t) * 1000.0), e2e_cpu += cpu_seconds() - c;
          };
          auto time_model = [&] {
            const double c = cpu_seconds();
            const auto t = Clock::now();
            clf.infer(x.data(), bs);
            if (i >= 0) model_ms.push_back(seconds_since(t) * 1000.0), model_cpu += cpu_seconds() - c;
          };
          if (i % 2 == 0) time_e2e(), time_model();
          else time_model(), time_e2e();
        }
        double e2e_sum = 0, model_sum = 0;
        for (double v : e2e_ms) e2e_sum += v;
        for (double v : model_ms) model_sum += v;
        const double n = double(iters), e2e_mean = e2e_sum / n, model_mean = model_sum / n;
        const double ips = bs * 1000.0 / e2e_mean, paired_model_ips = bs * 1000.0 / model_mean;
        results.push_back({{"backend", clf.backend_name()}, {"runtime", "native"}, {"mode", "end_to_end"},
                           {"batch_size", bs}, {"threads", options.threads}, {"workers", options.workers},
                           {"precision", clf.precision()}, {"images_per_s", r(ips, 2)}, {"iters", iters},
                           {"n_images", size_t(iters) * size_t(bs)}, {"failed", failed},
                           {"model_only_images_per_s", r(paired_model_ips, 2)},
                           {"fraction_of_model_only", r(ips / paired_model_ips, 3)},
                           {"ms_per_batch", r(e2e_mean, 3)}, {"p50_ms", r(percentile(e2e_ms, 50), 3)},
                           {"model_ms_per_batch", r(model_mean, 3)},
                           {"model_p50_ms", r(percentile(model_ms, 50), 3)},
                           {"overhead_ms_per_batch", r(e2e_mean - model_mean, 3)},
                           {"cpu_ms_per_batch", r(1000.0 * e2e_cpu / n, 3)},
                           {"model_cpu_ms_per_batch", r(1000.0 * model_cpu / n, 3)}});
        std::cerr << "end2end   batch " << bs << ": " << r(ips, 2) << " images/s ("
                  << r(100.0 * ips / paired_model_ips, 1) << "% of model only on the same batches)\n";
      }
    }
    char stamp[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    double load[3] = {0, 0, 0};
    getloadavg(load, 3);
    const Manifest& m = clf.bundle().manifest();
    json report = {
        {"env", {{"cpu_model", cpu_model()}, {"cores", std::thread::hardware_concurrency()},
                 {"threads", options.threads}, {"workers", options.workers}, {"runtime", "native (C++)"},
                 {"libraries", {{clf.backend_name(), clf.library_version()}}}, {"time_utc", stamp},
                 {"load_average_after", {load[0], load[1], load[2]}}, {"load_s", r(load_s, 3)},
                 {"bundle", {{"path", bundle_dir}, {"model_name", m.model_name},
                             {"input_shape", {3, H, W}}, {"n_classes", m.class_names.size()}}}}},
        {"config", {{"backend", backend}, {"precision", options.precision}, {"batch_sizes", batch_sizes},
                    {"threads", options.threads}, {"warmup", warmup}, {"iters", iters},
                    {"end_to_end", end_to_end.empty() ? json() : json(end_to_end)}}},
        {"results", results}};
    if (want_json && json_path.empty()) {
      std::cout << report.dump(1) << "\n";
    } else if (want_json) {
      const std::string tmp = json_path + ".tmp";
      std::ofstream(tmp) << report.dump(1) << "\n";
      std::rename(tmp.c_str(), json_path.c_str());  // atomic: never a half-written report
    } else {
      for (const auto& row : results) std::cout << row.dump() << "\n";
    }
  } catch (const Error& e) {
    fail(e.what());
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) { return guarded_main(run, argc, argv); }
