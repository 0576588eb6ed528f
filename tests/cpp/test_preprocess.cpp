// Decoding + preprocessing against the Python runtime (Pillow) on odd images: JPEG (incl. DCT-scaled draft
// decoding), PNG, all EXIF orientations, grey, CMYK, 16-bit, alpha, palette, 1/4-bit. The references come from
// make_fixtures.py (CLAP_EDGE_FIXTURES); the bound is one grey level per pixel (1/255 before normalisation).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>

#include "clap_edge/bundle.hpp"
#include "clap_edge/classifier.hpp"
#include "clap_edge/errors.hpp"
#include "clap_edge/image.hpp"
#include "fixtures.hpp"
#include "npy.hpp"

using namespace clap_edge;

namespace {

PreprocessConfig config(const std::string& name) {
  PreprocessConfig c;
  if (name == "sq224") { c.height = c.width = 224; }
  else if (name == "rect96x128") { c.height = 96; c.width = 128; }
  else if (name == "longest100x80") { c.height = 100; c.width = 80; c.resize_mode = "longest"; c.fill_color = 7; }
  else if (name == "squash50x70") { c.height = 50; c.width = 70; c.resize_mode = "squash"; }
  else if (name == "bilinear80") { c.height = c.width = 80; c.interpolation = "bilinear"; }
  else if (name == "nearest72") { c.height = c.width = 72; c.interpolation = "nearest"; }
  else if (name == "longest_bilinear64x90") {
    c.height = 64; c.width = 90; c.resize_mode = "longest"; c.interpolation = "bilinear"; c.fill_color = 200;
  } else if (name == "squash_nearest33x47") {
    c.height = 33; c.width = 47; c.resize_mode = "squash"; c.interpolation = "nearest";
  } else if (name == "squash_tall40x16") { c.height = 40; c.width = 16; c.resize_mode = "squash"; }
  else ADD_FAILURE() << "unknown geometry " << name;
  return c;
}

class Fixtures : public ::testing::Test {
 protected:
  void SetUp() override {
    if (fixtures().empty()) GTEST_SKIP() << "CLAP_EDGE_FIXTURES is not set (CTest sets it after make_fixtures)";
    names_ = image_names();
    ASSERT_GE(names_.size(), 20u) << "fixtures incomplete in " << fixtures();
  }
  std::vector<std::string> names_;
};

}  // namespace

// The whole path the runtime takes (draft decode at 2x the model input, resize, crop, normalise) on the
// bundle's 64x64 config, against Classifier.preprocess in Python.
TEST_F(Fixtures, PreprocessMatchesPythonRuntimeWithinOneGreyLevel) {
  const auto bundle = Bundle::open(fixtures() + "/bundle");
  const PreprocessConfig cfg = bundle->manifest().preprocess;
  DecodeOptions decode;
  decode.draft_width = decode.draft_height = kDraftOversample * std::max(cfg.height, cfg.width);
  const float min_std = *std::min_element(cfg.std.begin(), cfg.std.end());
  const float bound = 1.0f / 255.0f / min_std + 1e-6f;  // one grey level, in normalised units
  for (const auto& name : names_) {
    const auto ref = npy::load<float>(fixtures() + "/ref/pre_" + name + ".npy");
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{3, cfg.height, cfg.width})) << name;
    std::vector<float> got(ref.data.size());
    preprocess(load_image(fixtures() + "/images/" + name, decode), cfg, got.data());
    float worst = 0;
    size_t exact = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const float d = std::fabs(got[i] - ref.data[i]);
      worst = std::max(worst, d);
      exact += d == 0.0f;
    }
    EXPECT_LE(worst, bound) << name << ": max |diff| " << worst;
    // Most pixels are bit-identical (same filter, same rounding); a systematic error would not be.
    EXPECT_GE(double(exact) / got.size(), 0.99) << name;
  }
}

// Every geometry open_clip's eval transform has (square and non-square shortest side, longest with padding,
// squash, bilinear, nearest; extreme aspect ratios, one-pixel lines, upscaling, EXIF orientations in both byte
// orders), on full-resolution decodes, against clap_edge/core/preprocess.py resize_and_crop: bit-identical on
// lossless (PNG) sources, where decoding is exact too; within one grey level on JPEG/CMYK (IDCT rounding).
TEST_F(Fixtures, ResizeAndCropMatchesPillow) {
  for (const char* cfg_name : {"sq224", "rect96x128", "longest100x80", "squash50x70", "bilinear80", "nearest72",
                               "longest_bilinear64x90", "squash_nearest33x47", "squash_tall40x16"}) {
    const PreprocessConfig cfg = config(cfg_name);
    for (const auto& name : names_) {
      const auto ref = npy::load<uint8_t>(fixtures() + "/ref/geom_" + cfg_name + "_" + name + ".npy");
      const Image got = resize_and_crop(load_image(fixtures() + "/images/" + name), cfg);
      ASSERT_EQ(ref.shape, (std::vector<int64_t>{got.height, got.width, 3})) << cfg_name << " " << name;
      int worst = 0;
      for (size_t i = 0; i < got.pixels.size(); ++i) worst = std::max(worst, std::abs(int(got.pixels[i]) - int(ref.data[i])));
      const bool lossless = name.size() > 4 && name.substr(name.size() - 4) == ".png";
      EXPECT_LE(worst, lossless ? 0 : 1) << cfg_name << " " << name;
    }
  }
}

// Pillow 13 resizes vertically first when the height shrinks by more than twice as many pixels as the width
// (Resample.c); the two orders round differently, so a wrong order shows as pixels off by a few levels.
TEST(Resize, PassOrderFollowsPillow) {
  Image img(10, 300);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width * 3; ++x) img.row(y)[x] = uint8_t((x * 37 + y * 11 + (x * y) % 7 * 29) % 256);
  // Horizontal then vertical, by hand, versus the one call that must run vertical first here.
  const Image h_first = resize(resize(img, 3, 300, "bicubic"), 3, 64, "bicubic");
  const Image v_first = resize(resize(img, 10, 64, "bicubic"), 3, 64, "bicubic");
  ASSERT_NE(h_first.pixels, v_first.pixels) << "pick an image where the order matters";
  EXPECT_EQ(resize(img, 3, 64, "bicubic").pixels, v_first.pixels);
  // height shrinks by 5, width by 7 (5 <= 2 * 7): horizontal first
  EXPECT_EQ(resize(img, 3, 295, "bicubic").pixels, resize(resize(img, 3, 300, "bicubic"), 3, 295, "bicubic").pixels);
}

// The resize target is bounded as in preprocess.py: a 1xN image's shortest-side resize would be 224 x 224N.
TEST(Resize, TargetBoundRefusesDegenerateImages) {
  PreprocessConfig cfg;
  cfg.height = cfg.width = 64;
  EXPECT_EQ(resize_target(1, 100000, cfg), (std::pair<int64_t, int64_t>{6400000, 64}));
  try {
    resize_and_crop(Image(1, 300000), cfg);
    ADD_FAILURE() << "a 1x300000 image was resized";
  } catch (const ImageError& e) {
    EXPECT_NE(std::string(e.what()).find("too large to resize"), std::string::npos) << e.what();
  }
  EXPECT_EQ(resize_and_crop(Image(1, 3000), cfg).width, 64);  // 64 x 192000 is within the bound
  cfg.resize_mode = "longest";  // a 1-pixel side stays 1 pixel (open_clip would ask for 0)
  EXPECT_EQ(resize_target(1, 500, cfg), (std::pair<int64_t, int64_t>{64, 1}));
  EXPECT_EQ(resize_and_crop(Image(1, 500), cfg).height, 64);
}

// PIL's draft: the largest of 1/2, 1/4, 1/8 that keeps the image at least the draft size, size rounded up.
TEST_F(Fixtures, JpegDraftScalesAsPil) {
  DecodeOptions d;
  d.draft_width = d.draft_height = 128;
  const std::string dir = fixtures() + "/images/";
  const Image a = load_image(dir + "draft8_2301x1100.jpg", d), b = load_image(dir + "draft2_301x263.jpg", d);
  EXPECT_EQ(std::make_pair(a.width, a.height), std::make_pair((2301 + 7) / 8, (1100 + 7) / 8));
  EXPECT_EQ(std::make_pair(b.width, b.height), std::make_pair((301 + 1) / 2, (263 + 1) / 2));
  const Image rotated = load_image(dir + "draft4_exif6_900x701.jpg", d);  // EXIF 6: stored 900x701, shown 701x900
  EXPECT_EQ(std::make_pair(rotated.width, rotated.height), std::make_pair((701 + 3) / 4, (900 + 3) / 4));
  const Image full = load_image(dir + "draft8_2301x1100.jpg");
  EXPECT_EQ(full.width, 2301);
}

TEST_F(Fixtures, BrokenImagesRaiseImageErrorNamingTheFile) {
  const std::map<std::string, std::string> cases{{"truncated.jpg", "truncated"},
                                                 {"empty.jpg", "empty file (0 bytes)"},
                                                 {"not_an_image.png", "not an image file the runtime can read"},
                                                 {"truncated.png", "truncated"},
                                                 {"missing.jpg", "no such file"},
                                                 {"huge_header.jpg", "image is too large to decode (3600000000 pixels"},
                                                 {"huge_header.png", "image is too large to decode (3600000000 pixels"},
                                                 {"fifo.png", "not a regular file (named pipe (FIFO)); not opened"},
                                                 {"zero.jpg", "not a regular file (character device); not opened"},
                                                 {"dangling.png", "broken symbolic link"},
                                                 {"sparse_too_big.png", "file is too large to decode (314572800 bytes"}};
  for (const auto& [file, problem] : cases) {
    const std::string path = fixtures() + "/broken/" + file;
    try {
      load_image(path);
      ADD_FAILURE() << file << " decoded without error";
    } catch (const ImageError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(problem), std::string::npos) << msg;
    }
  }
}

// Hand-computed values, independent of Pillow: a constant image stays constant through the bicubic filter
// (weights sum to one), and downscaling a 2-pixel checkerboard column by 2 averages it (antialiasing: a
// plain 4-tap bicubic without the scaled support would alias it to one of the two values).
TEST(Resize, ConstantImageStaysConstant) {
  Image img(37, 23);
  std::fill(img.pixels.begin(), img.pixels.end(), 200);
  for (auto [w, h] : {std::pair{11, 7}, std::pair{90, 50}, std::pair{37, 5}}) {
    const Image out = resize(img, w, h, "bicubic");
    for (uint8_t v : out.pixels) ASSERT_EQ(v, 200);
  }
}

TEST(Resize, DownscalingAntialiases) {
  Image img(64, 4);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 64; ++x)
      for (int c = 0; c < 3; ++c) img.row(y)[x * 3 + c] = (x % 2) ? 255 : 0;
  const Image out = resize(img, 16, 4, "bicubic");
  for (int x = 2; x < 14; ++x) EXPECT_NEAR(out.row(1)[x * 3], 128, 1) << x;  // interior: the mean
}

TEST(Normalize, IsTorchToTensorThenNormalize) {
  PreprocessConfig cfg;
  Image img(1, 1);
  img.pixels = {0, 128, 255};
  float out[3];
  normalize(img, cfg, out);
  EXPECT_FLOAT_EQ(out[0], (0.0f - 0.48145466f) / 0.26862954f);
  EXPECT_FLOAT_EQ(out[1], (128.0f / 255.0f - 0.4578275f) / 0.26130258f);
  EXPECT_FLOAT_EQ(out[2], (1.0f - 0.40821073f) / 0.27577711f);
}
