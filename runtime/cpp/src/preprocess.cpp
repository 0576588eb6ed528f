// open_clip's eval transform on 8-bit RGB, matching clap_edge/core/preprocess.py (which runs Pillow).
//
// The resize is Pillow's ImagingResample written from its maths: a separable two-pass filter (horizontal
// pass first, over only the rows the vertical pass reads), the kernel's support scaled by the downscale
// factor (so shrinking antialiases), weights normalised to sum 1 in double, then converted to 22-bit fixed
// point; each pass rounds and clips to uint8, as Pillow's 8-bit path does.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "clap_edge/errors.hpp"
#include "clap_edge/image.hpp"

namespace clap_edge {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {  // Keys' cubic convolution kernel with a = -0.5, support 2
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double triangle(double x) {  // bilinear, support 1
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;   // per output: first input index, count
  std::vector<int32_t> k;    // per output: ksize fixed-point weights
};

Coeffs precompute(int in_size, int out_size, double (*filter)(double), double support0) {
  const double scale = double(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = support0 * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  c.k.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = filter((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[size_t(xx) * c.ksize + x] =
          v < 0 ? int(-0.5 + v * (1 << kPrecisionBits)) : int(0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[2 * xx] = xmin;
    c.bounds[2 * xx + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int v) {
  v >>= kPrecisionBits;  // arithmetic shift: floor, as Pillow's lookup table index
  return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Rows [row0, row0 + out.height) of in, resampled horizontally into out (C: channels, fixed for speed).
// Output column xx is the full resize's column xx + xoff; source columns are shifted left by col_shift.
template <int C>
void horizontal_c(const Image& in, int row0, const Coeffs& c, Image& out, int xoff, int col_shift) {
  constexpr int kHalf = 1 << (kPrecisionBits - 1);
  for (int y = 0; y < out.height; ++y) {
    const uint8_t* src = in.row(y + row0);
    uint8_t* dst = out.row(y);
    for (int xx = 0; xx < out.width; ++xx) {
      const int xmin = c.bounds[2 * (xx + xoff)] - col_shift, n = c.bounds[2 * (xx + xoff) + 1];
      const int32_t* k = &c.k[size_t(xx + xoff) * c.ksize];
      int ss[C];
      for (int ch = 0; ch < C; ++ch) ss[ch] = kHalf;
      const uint8_t* p = src + size_t(xmin) * C;
      for (int x = 0; x < n; ++x, p += C)
        for (int ch = 0; ch < C; ++ch) ss[ch] += p[ch] * k[x];
      for (int ch = 0; ch < C; ++ch) dst[xx * C + ch] = clip8(ss[ch]);
    }
  }
}

void horizontal(const Image& in, int row0, const Coeffs& c, Image& out, int xoff = 0, int col_shift = 0) {
  switch (in.channels) {
    case 1: horizontal_c<1>(in, row0, c, out, xoff, col_shift); break;
    case 4: horizontal_c<4>(in, row0, c, out, xoff, col_shift); break;
    default: horizontal_c<3>(in, row0, c, out, xoff, col_shift); break;
  }
}

// Output row yy is the full resize's row yy + yoff; source rows are shifted up by row_shift.
void vertical(const Image& in, const Coeffs& c, int row_shift, Image& out, int yoff = 0) {
  const size_t stride = size_t(in.width) * in.channels;
  std::vector<int> acc(stride);
  for (int yy = 0; yy < out.height; ++yy) {
    const int ymin = c.bounds[2 * (yy + yoff)] - row_shift, n = c.bounds[2 * (yy + yoff) + 1];
    const int32_t* k = &c.k[size_t(yy + yoff) * c.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < n; ++y) {
      const uint8_t* src = in.row(ymin + y);
      const int32_t ky = k[y];
      for (size_t i = 0; i < stride; ++i) acc[i] += src[i] * ky;
    }
    uint8_t* dst = out.row(yy);
    for (size_t i = 0; i < stride; ++i) dst[i] = clip8(acc[i]);
  }
}

// Pillow's NEAREST resize (ImagingScaleAffine): source positions accumulated by repeated addition from half a
// step, truncated; a position that falls outside the source leaves the pixel 0, as Pillow's fill does.
Image resize_nearest(const Image& in, int w, int h) {
  Image out(w, h, in.channels);
  const double sx = double(in.width) / w, sy = double(in.height) / h;
  std::vector<int> xin(size_t(w), -1);
  double xo = sx * 0.5;
  for (int x = 0; x < w; ++x, xo += sx) {
    const int xi = xo < 0.0 ? -1 : int(xo);
    if (xi >= 0 && xi < in.width) xin[x] = xi;
  }
  double yo = sy * 0.5;
  for (int y = 0; y < h; ++y, yo += sy) {
    const int yi = yo < 0.0 ? -1 : int(yo);
    if (yi < 0 || yi >= in.height) continue;
    for (int x = 0; x < w; ++x)
      if (xin[x] >= 0) std::memcpy(out.row(y) + size_t(x) * in.channels, in.row(yi) + size_t(xin[x]) * in.channels, in.channels);
  }
  return out;
}

// Python's round(): half to even (the default floating-point rounding mode).
int round_half_even(double v) { return int(std::nearbyint(v)); }

Image crop(const Image& img, int x0, int y0, int cw, int ch) {
  if (x0 == 0 && y0 == 0 && cw == img.width && ch == img.height) return img;
  Image out(cw, ch, img.channels);
  for (int y = 0; y < ch; ++y)
    std::memcpy(out.row(y), img.row(y + y0) + size_t(x0) * img.channels, size_t(cw) * img.channels);
  return out;
}

// The centre crop of a w x h image to crop_w x crop_h (both no larger): torchvision's offsets.
std::pair<int, int> crop_offsets(int w, int h, int crop_w, int crop_h) {
  return {int(std::nearbyint((w - crop_w) / 2.0)), int(std::nearbyint((h - crop_h) / 2.0))};
}

Image center_crop_or_pad(const Image& img, int crop_h, int crop_w, int fill) {
  const Image* src = &img;
  Image padded;
  if (crop_w > img.width || crop_h > img.height) {
    const int left = crop_w > img.width ? (crop_w - img.width) / 2 : 0;
    const int top = crop_h > img.height ? (crop_h - img.height) / 2 : 0;
    padded = Image(std::max(crop_w, img.width), std::max(crop_h, img.height), img.channels);
    std::fill(padded.pixels.begin(), padded.pixels.end(), uint8_t(fill));
    for (int y = 0; y < img.height; ++y)
      std::memcpy(padded.row(y + top) + size_t(left) * img.channels, img.row(y), size_t(img.width) * img.channels);
    if (padded.width == crop_w && padded.height == crop_h) return padded;
    src = &padded;
  }
  const int top = round_half_even((src->height - crop_h) / 2.0);
  const int left = round_half_even((src->width - crop_w) / 2.0);
  Image out(crop_w, crop_h, src->channels);
  for (int y = 0; y < crop_h; ++y)
    std::memcpy(out.row(y), src->row(y + top) + size_t(left) * src->channels, size_t(crop_w) * src->channels);
  return out;
}

}  // namespace

// The window [x0, x0 + cw) x [y0, y0 + ch) of Pillow's resize of `in` to w x h, computing only what the window
// needs (each output pixel depends only on its own row and column weights, so this is exact).
Image resize_window(const Image& in, int w, int h, const std::string& interpolation, int x0, int y0, int cw, int ch) {
  if (interpolation == "nearest") return crop(resize_nearest(in, w, h), x0, y0, cw, ch);
  if (w == in.width && h == in.height) return crop(in, x0, y0, cw, ch);
  const bool linear = interpolation == "bilinear";
  double (*filter)(double) = linear ? triangle : bicubic;
  const double support = linear ? 1.0 : 2.0;
  const bool need_h = w != in.width, need_v = h != in.height;
  Image out(cw, ch, in.channels);
  if (!need_h) {  // vertical pass only, on the window's columns
    const Coeffs cv = precompute(in.height, h, filter, support);
    vertical(crop(in, x0, 0, cw, in.height), cv, 0, out, y0);
    return out;
  }
  const Coeffs chz = precompute(in.width, w, filter, support);
  if (!need_v) {
    horizontal(in, y0, chz, out, x0, 0);
    return out;
  }
  const Coeffs cv = precompute(in.height, h, filter, support);
  // Pillow 13 (ImagingResampleInner) runs the vertical pass first when the height shrinks by more than twice
  // as many pixels as the width does (a growing width counts as a negative shrink); horizontal first otherwise.
  const bool horizontal_first = !(in.height - h > 0 && in.height - h > (in.width - w) * 2);
  if (!horizontal_first) {
    const int last = x0 + cw - 1;
    const int cx0 = chz.bounds[2 * x0], cx1 = chz.bounds[2 * last] + chz.bounds[2 * last + 1];
    Image tmp(cx1 - cx0, ch, in.channels);
    vertical(crop(in, cx0, 0, cx1 - cx0, in.height), cv, 0, tmp, y0);
    horizontal(tmp, 0, chz, out, x0, cx0);
    return out;
  }
  const int last = y0 + ch - 1;
  const int row_first = cv.bounds[2 * y0], row_last = cv.bounds[2 * last] + cv.bounds[2 * last + 1];
  Image tmp(cw, row_last - row_first, in.channels);
  horizontal(in, row_first, chz, tmp, x0, 0);
  vertical(tmp, cv, row_first, out, y0);
  return out;
}

Image resize(const Image& in, int w, int h, const std::string& interpolation) {
  if (w == in.width && h == in.height) return in;
  return resize_window(in, w, h, interpolation, 0, 0, w, h);
}

std::pair<int64_t, int64_t> resize_target(int width, int height, const PreprocessConfig& cfg) {
  const int th = cfg.height, tw = cfg.width;
  if (cfg.resize_mode == "squash") return {th, tw};
  if (cfg.resize_mode == "longest" || th != tw) {
    const double rh = double(height) / th, rw = double(width) / tw;
    const double ratio = cfg.resize_mode == "longest" ? std::max(rh, rw) : std::min(rh, rw);
    // At least one pixel per side (open_clip would ask for 0 on a 1xN image in "longest" mode), as preprocess.py.
    return {std::max<int64_t>(1, std::llround(std::nearbyint(height / ratio))),
            std::max<int64_t>(1, std::llround(std::nearbyint(width / ratio)))};
  }
  // torchvision Resize(int): short edge -> size, long edge int()-truncated
  const bool portrait = width <= height;
  const int shorter = portrait ? width : height, longer = portrait ? height : width;
  const auto new_long = int64_t(double(th) * longer / shorter);
  return portrait ? std::make_pair(new_long, int64_t(th)) : std::make_pair(int64_t(th), new_long);
}

Image resize_and_crop(const Image& img, const PreprocessConfig& cfg) {
  const int th = cfg.height, tw = cfg.width;
  const auto [rh64, rw64] = resize_target(img.width, img.height, cfg);
  if (rh64 * rw64 > std::max<int64_t>(kMaxResizePixels, int64_t(th) * tw))
    throw ImageError("image is too large to resize: " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                     " would be resized to " + std::to_string(rw64) + "x" + std::to_string(rh64) +
                     " pixels before the crop (limit " + std::to_string(kMaxResizePixels) + ")");
  const int rh = int(rh64), rw = int(rw64);
  const std::string& interp = cfg.interpolation == "random" ? std::string("bicubic") : cfg.interpolation;
  if (cfg.resize_mode == "squash") return resize(img, tw, th, interp);
  if (cfg.resize_mode == "longest") return center_crop_or_pad(resize(img, rw, rh, interp), th, tw, cfg.fill_color);
  // open_clip builds ResizeKeepRatio for a non-square shortest size without its interpolation: always bicubic
  const std::string how = th == tw ? interp : std::string("bicubic");
  if (rw >= tw && rh >= th && (rw != img.width || rh != img.height)) {
    // Resize only the pixels the centre crop keeps.
    const auto [left, top] = crop_offsets(rw, rh, tw, th);
    return resize_window(img, rw, rh, how, left, top, tw, th);
  }
  return center_crop_or_pad(resize(img, rw, rh, how), th, tw, 0);  // torchvision CenterCrop pads with 0
}

void normalize(const Image& img, const PreprocessConfig& cfg, float* out) {
  // ToTensor + Normalize in float32, in torch's order ((v / 255 - mean) / std), tabulated per channel.
  float lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (float(v) / 255.0f - cfg.mean[c]) / cfg.std[c];
  const size_t plane = size_t(img.width) * img.height;
  const uint8_t* p = img.pixels.data();
  for (size_t i = 0; i < plane; ++i, p += 3) {
    out[i] = lut[0][p[0]];
    out[plane + i] = lut[1][p[1]];
    out[2 * plane + i] = lut[2][p[2]];
  }
}

void preprocess(const Image& image, const PreprocessConfig& cfg, float* out) {
  normalize(resize_and_crop(image, cfg), cfg, out);
}

}  // namespace clap_edge
