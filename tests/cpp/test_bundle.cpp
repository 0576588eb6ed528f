// Manifest validation rules, sha256 checks and engine selection.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../../runtime/cpp/src/engines.hpp"
#include "clap_edge/bundle.hpp"
#include "clap_edge/classifier.hpp"
#include "clap_edge/errors.hpp"
#include "fixtures.hpp"

using namespace clap_edge;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kHash(64, 'a');

json valid_manifest() {
  return json::parse(R"({
    "schema_version": 4, "model": {"model_name": "clap-edge-tiny", "pretrained": null},
    "class_names": ["cat", "dog", "car"], "embed_dim": 8, "logit_scale": 100.0,
    "preprocess": {"size": [32, 32], "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                   "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0},
    "inputs": [{"name": "image", "shape": ["N", 3, 32, 32], "dtype": "float32"}],
    "outputs": [{"name": "embedding", "shape": ["N", 8], "dtype": "float32"}],
    "classes": {"bias": true, "provenance": {"method": "zero-shot-text"}},
    "variants": {"fp32": "model.onnx"},
    "files": {"model.onnx": {"sha256": ")" + kHash + R"(", "bytes": 10},
              "classes.safetensors": {"sha256": ")" + kHash + R"(", "bytes": 100}}})");
}

// The BundleError message for a manifest, or "" if it is accepted.
std::string problem(const std::string& text) {
  try {
    parse_manifest(text, "b/manifest.json");
    return "";
  } catch (const BundleError& e) {
    return e.what();
  }
}
std::string problem(const json& m) { return problem(m.dump()); }

}  // namespace

TEST(Manifest, AcceptsAValidManifestAndReadsIt) {
  const Manifest m = parse_manifest(valid_manifest().dump(), "b/manifest.json");
  EXPECT_EQ(m.class_names, (std::vector<std::string>{"cat", "dog", "car"}));
  EXPECT_EQ(m.embed_dim, 8);
  EXPECT_EQ(m.preprocess.height, 32);
  EXPECT_FLOAT_EQ(m.preprocess.std[1], 0.25f);
  EXPECT_EQ(m.variants.at("fp32"), "model.onnx");
  EXPECT_EQ(m.files.at("model.onnx").bytes, 10);
}

// The rules of export/bundle/manifest.py, with its field paths (the conformance suite runs them end to end).
TEST(Manifest, RefusesEachBrokenRuleNamingTheField) {
  struct Case {
    std::function<void(json&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases{
      {[](json& m) { m["schema_version"] = 5; }, "schema_version: 5 is newer"},
      {[](json& m) { m["schema_version"] = 3; },
       "schema_version: 3 is older than this clap-edge reads (>= 4); re-export the bundle with clap-edge >= 0.2"},
      {[](json& m) { m["schema_version"] = "2"; }, "schema_version: must be an integer"},
      {[](json& m) { m.erase("files"); }, "files: is missing"},
      {[](json& m) { m["class_names"] = json::array(); }, "class_names: must have 1..200000 items"},
      {[](json& m) { m["class_names"] = {"cat", "cat", "dog"}; }, "'cat' appears twice"},
      {[](json& m) { m["class_names"][1] = "do\ng"; }, "class_names[1]: contains a control character U+000A"},
      {[](json& m) { m["class_names"][1] = "cafe\u0301"; }, "class_names[1]: is not in Unicode NFC form"},
      {[](json& m) { m["class_names"][1] = "a\u2029"; }, "class_names[1]: contains U+2029"},
      {[](json& m) { m["class_names"][1] = ""; }, "class_names[1]: is empty"},
      {[](json& m) { m["class_names"][1] = std::string(1025, 'x'); }, "has 1025 characters, more than 1024"},
      {[](json& m) { m["embed_dim"] = 0; }, "embed_dim: must be an integer in [1, 65536]"},
      {[](json& m) { m["embed_dim"] = 4294967304ULL; }, "embed_dim: must be an integer in [1, 65536]"},
      {[](json& m) { m["embed_dim"] = 8.5; }, "embed_dim: must be an integer"},
      {[](json& m) { m["preprocess"]["std"] = {0.2, 0.0, 0.2}; }, "preprocess.std[1]: must be > 0"},
      {[](json& m) { m["preprocess"]["mean"] = {0.2, 0.2}; }, "preprocess.mean: must have 3 items"},
      {[](json& m) { m["preprocess"]["interpolation"] = "lanczos"; }, "preprocess.interpolation: must be one of"},
      {[](json& m) { m["preprocess"]["fill_color"] = 300; }, "preprocess.fill_color: must be an integer in [0, 255]"},
      {[](json& m) { m["preprocess"]["size"] = {4294967328ULL, 32}; }, "preprocess.size[0]: must be an integer"},
      {[](json& m) { m["inputs"][0]["shape"] = {"N", 3, 48, 48}; }, "inputs[0].shape: ['N', 3, 48, 48] does not match [N, 3, 32, 32]"},
      {[](json& m) { m["outputs"][0]["shape"] = {"N", 4}; }, "'embedding' has width 4 but the bundle has 8 embedding dims"},
      {[](json& m) { m["outputs"][0]["name"] = "pooled"; }, "outputs: lists no 'embedding' output"},
      {[](json& m) { m["outputs"].push_back({{"name", "logits"}, {"shape", {"N", 3}}}); },
       "outputs[1].name: 'logits' is not a model output in schema_version 4"},
      {[](json& m) { m.erase("logit_scale"); }, "logit_scale: is missing"},
      {[](json& m) { m["logit_scale"] = 0; }, "logit_scale: must be > 0"},
      {[](json& m) { m["classes"]["bias"] = 1; }, "classes.bias: must be true or false"},
      {[](json& m) { m["classes"]["matrix"] = 1; }, "classes.matrix: is not a classes field"},
      {[](json& m) { m["text"] = {{"file", "text.onnx"}, {"context_length", 77}, {"tokenizer", json::object()}}; },
       "text.file: names 'text.onnx', which files does not list"},
      {[](json& m) { m["files"]["../escape.onnx"] = {{"sha256", kHash}, {"bytes", 1}}; }, "outside the bundle"},
      {[](json& m) { m["files"]["./a.onnx"] = {{"sha256", kHash}, {"bytes", 1}}; }, "outside the bundle"},
      {[](json& m) { m["files"]["a\nb"] = {{"sha256", kHash}, {"bytes", 1}}; }, "files['a\\nb']: names a path outside"},
      {[](json& m) { m["files"]["model.onnx"]["sha256"] = "abc"; }, "sha256: must be 64 lower-case hex digits"},
      {[](json& m) { m["files"]["model.onnx"]["bytes"] = -1; }, "bytes: must be an integer in [0, "},
      {[](json& m) { m["files"].erase("classes.safetensors"); }, "does not list classes.safetensors"},
      {[](json& m) { m["files"]["manifest.sha256"] = {{"sha256", kHash}, {"bytes", 1}}; }, "managed by the bundle"},
      {[](json& m) { m["variants"]["int8"] = "model.int8.onnx"; }, "variants.int8: names 'model.int8.onnx'"},
      {[](json& m) { m["engines"] = {{{"file", "engines/a.plan"}, {"engine", "tensorrt"}, {"precision", "fp16"}}}; },
       "engines[0].file: names 'engines/a.plan', which files does not list"},
  };
  for (const auto& c : cases) {
    json m = valid_manifest();
    c.edit(m);
    const std::string msg = problem(m);
    EXPECT_EQ(msg.rfind("b/manifest.json: manifest field ", 0), 0u) << "accepted or unnamed: " << m.dump() << " -> " << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  EXPECT_NE(problem(json::array()).find("must be an object"), std::string::npos);
}

TEST(Manifest, NumbersAndTextThatDoNotFitAreRefusedNotWrapped) {
  const std::string text = valid_manifest().dump();
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    t.replace(t.find(from), from.size(), to);
    return problem(t);
  };
  EXPECT_NE(with("\"embed_dim\":8", "\"embed_dim\":1e400").find("not finite"), std::string::npos);
  EXPECT_NE(with("\"embed_dim\":8", "\"embed_dim\":" + std::string(5000, '9')).find("an integer of 5,000 digits"), std::string::npos);
  EXPECT_NE(with("\"schema_version\":4", "\"schema_version\":18446744073709551618").find("schema_version"), std::string::npos);
  EXPECT_EQ(with("\"embed_dim\":8", "\"embed_dim\":8.0"), "");  // an integral float is an integer (JSON Schema)
  EXPECT_NE(with("\"cat\"", "\"c\\ud800\"").find("surrogate"), std::string::npos);
  EXPECT_NE(problem(text + std::string(1, '\0')).find("not valid JSON"), std::string::npos);
  EXPECT_NE(problem(std::string(100000, '[')).find("nested more than 32 levels"), std::string::npos);
}

TEST(Manifest, EnginesSection) {
  json m = valid_manifest();  // the engines section as export writes it: [{file, sidecar, engine, precision}]
  m["files"]["engines/a.plan"] = {{"sha256", kHash}, {"bytes", 1}};
  m["engines"] = {{{"file", "engines/a.plan"}, {"sidecar", nullptr}, {"engine", "tensorrt"}, {"precision", "fp16"}}};
  EXPECT_EQ(parse_manifest(m.dump(), "b").engines.at(0).name, "tensorrt");  // a null sidecar is none, as in Python
  m["engines"][0]["sidecar"] = "engines/../../x.json";
  EXPECT_NE(problem(m).find("engines[0].sidecar: names a path outside the bundle"), std::string::npos);
}

TEST(BundleFiles, ManifestDigestIsChecked) {
  if (fixtures().empty()) GTEST_SKIP() << "CLAP_EDGE_FIXTURES is not set";
  const fs::path copy = fs::temp_directory_path() / "clap_edge_digest_test";
  fs::remove_all(copy);
  fs::copy(fixtures() + "/bundle", copy, fs::copy_options::recursive);
  const std::string actual = sha256_file((copy / "manifest.json").string());
  std::ofstream(copy / "manifest.sha256") << actual << "  manifest.json\n";
  EXPECT_NO_THROW(Bundle::open(copy.string()));
  std::ofstream(copy / "manifest.sha256", std::ios::trunc) << std::string(64, '0') << "  manifest.json\n";
  try {
    Bundle::open(copy.string());
    ADD_FAILURE() << "a manifest not matching manifest.sha256 was accepted";
  } catch (const BundleError& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.json was modified after export"), std::string::npos) << e.what();
  }
  fs::remove_all(copy);
}

TEST(Sha256, KnownVectors) {
  const fs::path p = fs::temp_directory_path() / "clap_edge_sha_test.txt";
  std::ofstream(p) << "abc";
  EXPECT_EQ(sha256_file(p.string()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::ofstream(p, std::ios::trunc).close();
  EXPECT_EQ(sha256_file(p.string()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  fs::remove(p);
}

TEST(BundleFiles, TamperedModelIsRefusedNamingTheFile) {
  if (fixtures().empty()) GTEST_SKIP() << "CLAP_EDGE_FIXTURES is not set";
  try {
    Classifier::open(fixtures() + "/tampered", "openvino");
    FAIL() << "a tampered bundle was opened";
  } catch (const BundleError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'model.onnx' is corrupt or was modified"), std::string::npos) << msg;
  }
  // The untouched bundle opens; a file not listed is refused.
  const auto bundle = Bundle::open(fixtures() + "/bundle");
  EXPECT_NO_THROW(bundle->file("model.onnx"));
  EXPECT_THROW(bundle->file("nope.bin"), BundleError);
}

TEST(Engines, SidecarParsingAndSelection) {
  EngineInfo a = parse_engine_sidecar(
      R"({"gpu": "NVIDIA H100 80GB HBM3", "tensorrt_version": "10.3.0", "precision": "fp16",
          "batch_profile": {"min": 1, "opt": 8, "max": 32}})", "a.json");
  EXPECT_EQ(a.max_batch, 32);
  EXPECT_EQ(a.opt_batch, 8);
  EngineInfo b = a, c = a, d = a;
  b.precision = "int8";
  c.gpu = "NVIDIA L4";
  d.library_version = "8.6.1";
  a.name = "a"; b.name = "b"; c.name = "c"; d.name = "d";
  const std::vector<EngineInfo> all{b, c, d, a};
  std::string why;
  EXPECT_EQ(select_engine(all, "NVIDIA H100 80GB HBM3", "10.3.1", "auto", &why)->name, "a");  // fp16 first
  EXPECT_EQ(select_engine(all, "nvidia h100 80gb hbm3", "10.3.0", "int8", &why)->name, "b");
  EXPECT_EQ(select_engine(all, "NVIDIA L4", "10.3.0", "auto", &why)->name, "c");
  EXPECT_EQ(select_engine(all, "NVIDIA A100", "10.3.0", "auto", &why), nullptr);
  EXPECT_NE(why.find("built for NVIDIA H100"), std::string::npos) << why;
  EXPECT_EQ(select_engine(all, "NVIDIA H100 80GB HBM3", "10.5.0", "auto", &why), nullptr);
  // the sidecar exactly as the Python builder writes it (export/bundle/engines.py)
  EngineInfo py = parse_engine_sidecar(
      R"({"engine": "tensorrt", "file": "engines/e.plan", "precision": "fp16", "batch": [1, 8, 64],
          "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
          "library": "tensorrt", "library_version": "10.3.0", "source_model": "model.fp16.onnx",
          "source_sha256": ")" + std::string(64, 'b') + R"(", "engine_sha256": ")" + std::string(64, 'e') + R"("})",
      "py.json");
  EXPECT_EQ(py.source_model, "model.fp16.onnx");
  EXPECT_EQ(py.engine_sha256, std::string(64, 'e'));
  EXPECT_EQ(py.gpu, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(py.library_version, "10.3.0");
  EXPECT_EQ(py.min_batch, 1);
  EXPECT_EQ(py.opt_batch, 8);
  EXPECT_EQ(py.max_batch, 64);
  EXPECT_THROW(parse_engine_sidecar(R"({"gpu": "x"})", "s.json"), BundleError);
  EXPECT_THROW(parse_engine_sidecar(R"({"gpu": "x", "tensorrt_version": "10.0", "precision": "fp16",
                                         "batch_profile": {"min": 8, "opt": 4, "max": 16}})", "s.json"),
               BundleError);
}

// A stale or swapped engine is refused whatever the GPU, with the Python selection's reasons.
TEST(Engines, StaleOrSwappedEngineIsUnusable) {
  const fs::path root = fs::temp_directory_path() / "clap_edge_engine_reason_test";
  fs::remove_all(root);
  fs::create_directories(root);
  std::ofstream(root / "model.onnx") << "onnx";
  Manifest m;
  m.files["model.onnx"] = FileEntry{std::string(64, 'b'), 4};
  m.files["engines/e.plan"] = FileEntry{std::string(64, 'e'), 4};
  EngineInfo e;
  e.file = "engines/e.plan";
  e.source_model = "model.onnx";
  e.source_sha256 = std::string(64, 'b');
  e.engine_sha256 = std::string(64, 'e');
  EXPECT_EQ(engine_unusable_reason(m, e, root.string()), "");
  EngineInfo swapped = e;
  swapped.engine_sha256 = std::string(64, 'f');  // the plan listed now is not the one the sidecar describes
  EXPECT_NE(engine_unusable_reason(m, swapped, root.string()).find("are not the engine its sidecar records"),
            std::string::npos);
  EngineInfo old = e;
  old.engine_sha256.clear();  // a schema-2 sidecar
  EXPECT_NE(engine_unusable_reason(m, old, root.string()).find("no engine_sha256"), std::string::npos);
  EngineInfo stale = e;
  stale.source_sha256 = std::string(64, 'c');
  EXPECT_NE(engine_unusable_reason(m, stale, root.string()).find("built from a different model.onnx"),
            std::string::npos);
  fs::remove(root / "model.onnx");  // listed, but gone from the folder
  EXPECT_EQ(engine_unusable_reason(m, e, root.string()), "built from model.onnx, which is missing from the bundle");
  m.files.erase("model.onnx");
  EXPECT_EQ(engine_unusable_reason(m, e, root.string()), "built from model.onnx, which this bundle no longer lists");
  fs::remove_all(root);
}
