// The classifier end to end on the fixture bundle: logits against the Python ONNX Runtime backend, broken
// images reported while the rest are classified, concurrent predict calls.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <thread>

#include "clap_edge/classifier.hpp"
#include "fixtures.hpp"
#include "npy.hpp"

using namespace clap_edge;

namespace {

std::vector<std::string> image_paths() {
  std::vector<std::string> paths;
  for (const auto& name : image_names()) paths.push_back(fixtures() + "/images/" + name);
  return paths;
}

Options fp32() {
  Options o;
  o.precision = "fp32";  // the CPU plugin's default may be bf16; parity with ONNX Runtime is checked in fp32
  return o;
}

class ClassifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (fixtures().empty()) GTEST_SKIP() << "CLAP_EDGE_FIXTURES is not set";
  }
};

}  // namespace

TEST_F(ClassifierTest, LogitsMatchOnnxRuntimeOnTheSameBundle) {
  const Classifier clf = Classifier::open(fixtures() + "/bundle", "openvino", fp32());
  const auto ref_logits = npy::load<float>(fixtures() + "/ref/logits.npy");
  const auto ref_emb = npy::load<float>(fixtures() + "/ref/embedding.npy");
  const auto paths = image_paths();
  ASSERT_EQ(size_t(ref_logits.shape[0]), paths.size());
  // (1) model parity: the Python runtime's own preprocessed tensors through the C++ backend.
  std::vector<float> batch;
  for (const auto& p : paths) {
    const std::string name = p.substr(p.rfind('/') + 1);
    const auto x = npy::load<float>(fixtures() + "/ref/pre_" + name + ".npy");
    batch.insert(batch.end(), x.data.begin(), x.data.end());
  }
  const BatchOutput out = clf.infer(batch.data(), int64_t(paths.size()));
  ASSERT_EQ(out.logits.size(), ref_logits.data.size());
  float worst = 0;
  for (size_t i = 0; i < out.logits.size(); ++i) worst = std::max(worst, std::fabs(out.logits[i] - ref_logits.data[i]));
  EXPECT_LE(worst, 1e-3f);
  for (size_t i = 0; i < out.embedding.size(); ++i) ASSERT_NEAR(out.embedding[i], ref_emb.data[i], 1e-4f) << i;
  // (2) end to end from files: C++ decoding + preprocessing + backend vs the Python runtime (one grey level
  // of preprocessing difference moves a logit by far less than the bound used here).
  const auto preds = clf.predict(paths, 5, 7);
  ASSERT_EQ(preds.size(), paths.size());
  const int64_t C = ref_logits.shape[1];
  for (size_t n = 0; n < preds.size(); ++n) {
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(preds[n].logits[size_t(c)], ref_logits.data[n * C + c], 2e-2f) << paths[n];
    // scores: softmax over all classes, top-k sorted
    const auto probs = softmax(ref_logits.data.data() + n * C, 1, C);
    const float best = *std::max_element(probs.begin(), probs.end());
    EXPECT_NEAR(preds[n].scores[0], best, 2e-3f);
    EXPECT_TRUE(std::is_sorted(preds[n].scores.rbegin(), preds[n].scores.rend()));
    EXPECT_EQ(preds[n].path, paths[n]);
    EXPECT_EQ(preds[n].embedding.size(), size_t(ref_emb.shape[1]));
  }
}

TEST_F(ClassifierTest, BrokenImageIsReportedAndTheRestClassified) {
  const Classifier clf = Classifier::open(fixtures() + "/bundle", "openvino", fp32());
  auto paths = image_paths();
  paths.resize(6);
  paths.insert(paths.begin() + 2, fixtures() + "/broken/truncated.jpg");
  paths.push_back(fixtures() + "/broken/empty.jpg");
  std::vector<FileResult> results;
  clf.predict_files(paths, 4, 3, [&](const FileResult& r) { results.push_back(r); });
  ASSERT_EQ(results.size(), paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    EXPECT_EQ(results[i].path, paths[i]);
    const bool broken = paths[i].find("/broken/") != std::string::npos;
    EXPECT_EQ(results[i].ok, !broken) << paths[i] << " " << results[i].error;
    if (broken) EXPECT_EQ(results[i].error.rfind(paths[i] + ": ", 0), 0u) << results[i].error;
    else EXPECT_EQ(results[i].prediction.labels.size(), 3u);
  }
  EXPECT_THROW(clf.predict(paths, 3), ImageError);  // predict (not predict_files) raises on the first one
}

TEST_F(ClassifierTest, ConcurrentPredictGivesTheSameAnswers) {
  const Classifier clf = Classifier::open(fixtures() + "/bundle", "openvino", fp32());
  const auto paths = image_paths();
  const auto expected = clf.predict(paths, 5, 8);
  std::vector<std::vector<Prediction>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[size_t(t)] = clf.predict(paths, 5, 3 + t); });
  for (auto& t : threads) t.join();
  for (const auto& g : got) {
    ASSERT_EQ(g.size(), expected.size());
    for (size_t i = 0; i < g.size(); ++i) {
      EXPECT_EQ(g[i].labels, expected[i].labels);
      for (size_t c = 0; c < g[i].logits.size(); ++c) EXPECT_NEAR(g[i].logits[c], expected[i].logits[c], 1e-4f);
    }
  }
}

TEST(Softmax, SumsToOneAndIsStable) {
  const float logits[] = {1000.0f, 1001.0f, 999.0f, 0.0f, 0.0f, 0.0f};
  const auto p = softmax(logits, 2, 3);
  EXPECT_NEAR(p[0] + p[1] + p[2], 1.0, 1e-6);
  EXPECT_NEAR(p[1], 1.0 / (1.0 + std::exp(-1.0) + std::exp(-2.0)), 1e-6);
  EXPECT_NEAR(p[3], 1.0 / 3.0, 1e-7);
}
