// libFuzzer harness: image bytes -> decode_image (decode.cpp: libjpeg / libpng, EXIF orientation, draft
// scaling, colour conversions) -> resize_and_crop + normalize (preprocess.cpp) for small results. Bad input must
// end in clap_edge::ImageError; anything else is a finding. Built and run by bench/native_fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "clap_edge/errors.hpp"
#include "clap_edge/image.hpp"
#include "decode.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  clap_edge::DecodeOptions opt;
  opt.draft_width = opt.draft_height = 64;  // exercises libjpeg's DCT scaling on images >= 128 px
  opt.max_pixels = 1 << 22;                 // keeps each run fast; the limit's own path is still reached
  try {
    const clap_edge::Image img = clap_edge::decode_image("fuzz.img", bytes, opt);
    if (img.channels != 3 || img.pixels.size() != size_t(img.width) * img.height * 3) __builtin_trap();
    if (int64_t(img.width) * img.height <= 512 * 512) {
      clap_edge::PreprocessConfig cfg;
      cfg.height = cfg.width = 32;
      cfg.resize_mode = size % 3 == 0 ? "shortest" : size % 3 == 1 ? "longest" : "squash";
      std::vector<float> out(3 * 32 * 32);
      clap_edge::preprocess(img, cfg, out.data());
    }
  } catch (const clap_edge::ImageError& e) {
    if (std::string(e.what()).find('\n') != std::string::npos) __builtin_trap();  // errors are one line
  }
  return 0;
}
