// Decoding image files into 8-bit RGB and preprocessing them as open_clip's eval transform.
//
// Mirrors clap_edge/core/images.py (decoding: EXIF orientation, grey, CMYK, 16-bit, alpha composited on white)
// and clap_edge/core/preprocess.py (shortest-side resize with Pillow's antialiasing bicubic filter, centre crop,
// normalise), so a tensor made here is within one grey level of the Python runtime's.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace clap_edge {

// An 8-bit image, interleaved, row-major; channels is 3 (RGB) unless stated otherwise.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<uint8_t> pixels;  // height * width * channels

  Image() = default;
  Image(int w, int h, int c = 3) : width(w), height(h), channels(c), pixels(size_t(w) * h * c) {}
  uint8_t* row(int y) { return pixels.data() + size_t(y) * width * channels; }
  const uint8_t* row(int y) const { return pixels.data() + size_t(y) * width * channels; }
};

struct DecodeOptions {
  // JPEG only: decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while the image still covers
  // draft_width x draft_height, as PIL's Image.draft (the Python runtime passes twice the model input).
  int draft_width = 0;
  int draft_height = 0;
  // Refuse images with more pixels than this after the draft reduction (PIL's default limit).
  int64_t max_pixels = 89478485;
};

// Files larger than this are refused from their size, before a byte is read (clap_edge/core/images.py MAX_FILE_BYTES).
constexpr int64_t kMaxFileBytes = int64_t(1) << 28;

// Decode a JPEG or PNG file into RGB with its EXIF orientation applied. Throws ImageError naming the path.
Image load_image(const std::string& path, const DecodeOptions& options = {});

// The preprocess block of a bundle's manifest (the fields of open_clip's PreprocessCfg).
struct PreprocessConfig {
  int height = 224;
  int width = 224;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
  std::string interpolation = "bicubic";  // bicubic | bilinear | nearest | random (= bicubic)
  std::string resize_mode = "shortest";   // shortest | longest | squash
  int fill_color = 0;
};

// Pillow's Image.resize (bicubic / bilinear with support scaled on downscaling, nearest) on an RGB image.
Image resize(const Image& image, int width, int height, const std::string& interpolation);

// The window [x0, x0 + cw) x [y0, y0 + ch) of resize(image, width, height, ...), computing only that window.
Image resize_window(const Image& image, int width, int height, const std::string& interpolation, int x0, int y0,
                    int cw, int ch);

// The largest image the resize step may make before the crop; beyond it resize_and_crop throws ImageError
// (without a path), as clap_edge/core/preprocess.py MAX_RESIZE_PIXELS.
constexpr int64_t kMaxResizePixels = int64_t(1) << 24;

// (h, w) the eval transform resizes a width x height image to, before the crop (preprocess.py resize_target).
std::pair<int64_t, int64_t> resize_target(int width, int height, const PreprocessConfig& cfg);

// The geometric part of the eval transform: resize and centre crop (or pad) to exactly height x width.
Image resize_and_crop(const Image& image, const PreprocessConfig& cfg);

// uint8 RGB [H, W, 3] -> normalised float32 [3, H, W] written to out (H * W * 3 floats).
void normalize(const Image& image, const PreprocessConfig& cfg, float* out);

// The whole transform: resize, crop, normalise into out (3 * cfg.height * cfg.width floats).
void preprocess(const Image& image, const PreprocessConfig& cfg, float* out);

}  // namespace clap_edge
