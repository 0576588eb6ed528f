// JPEG (libjpeg-turbo) and PNG (libpng) decoding into RGB, as clap_edge/core/images.py does with Pillow:
// - JPEG: grey replicated; CMYK read as Adobe-inverted (Pillow assumes Adobe conventions for every CMYK JPEG)
//   and converted with Pillow's cmyk2rgb; DCT scaling as PIL's Image.draft; EXIF orientation applied.
// - PNG: palette expanded (its tRNS alpha composited), 1/2/4-bit grey expanded, 16-bit grey scaled to 8 bits
//   (v * 255 + 32767) / 65535, other 16-bit images keep the high byte (Pillow's RGB;16B raw modes), alpha
//   composited on white with Pillow's paste rounding; eXIf orientation applied.
#include <fcntl.h>
#include <png.h>
#include <setjmp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "clap_edge/errors.hpp"
#include "clap_edge/image.hpp"
#include "exif.hpp"

extern "C" {
#include <jerror.h>
#include <jpeglib.h>
}

namespace clap_edge {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw ImageError(path + ": " + problem);
}

// 'named pipe (FIFO)', 'socket', ... for a stat mode, as clap_edge/core/io.py file_kind.
std::string file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "named pipe (FIFO)";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISDIR(mode)) return "directory";
  return "special file";
}

bool is_jpeg(const uint8_t* d, size_t n) { return n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF; }
bool is_png(const uint8_t* d, size_t n) { return n >= 8 && png_sig_cmp(d, 0, 8) == 0; }

// The file's bytes, as clap_edge/core/images.py opens it: without blocking (O_NONBLOCK: a FIFO never hangs), only
// a regular file, its size checked before a byte is read, its magic bytes before the rest is read.
std::vector<uint8_t> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    struct stat lst {};
    if (err == ENOENT) fail(path, ::lstat(path.c_str(), &lst) == 0 ? "broken symbolic link" : "no such file");
    if (err == ELOOP) fail(path, "symbolic link loop");
    if (err == EACCES || err == EPERM) fail(path, "permission denied");
    if (err == EISDIR) fail(path, "is a directory, not an image");
    fail(path, std::string("cannot decode image: ") + std::strerror(err));
  }
  struct Closer { int fd; ~Closer() { ::close(fd); } } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, std::string("cannot decode image: ") + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, "is a directory, not an image");
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file (" + file_kind(st.st_mode) + "); not opened");
  if (st.st_size == 0) fail(path, "cannot decode image: empty file (0 bytes)");
  if (st.st_size > kMaxFileBytes)
    fail(path, "file is too large to decode (" + std::to_string(st.st_size) + " bytes, limit " +
                   std::to_string(kMaxFileBytes) + ")");
  std::vector<uint8_t> data(size_t(std::min<off_t>(st.st_size, 8)));
  auto read_into = [&](size_t from) {
    size_t got = from;
    while (got < data.size()) {
      const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail(path, std::string("cannot decode image: ") + std::strerror(errno));
      if (n == 0) break;  // shorter than fstat said: the decoder reports it truncated
      got += size_t(n);
    }
    data.resize(got);
  };
  read_into(0);
  if (!is_jpeg(data.data(), data.size()) && !is_png(data.data(), data.size()))
    fail(path, "cannot decode image: not an image file the runtime can read");
  const size_t head = data.size();
  data.resize(size_t(st.st_size));
  read_into(head);
  return data;
}

// Pillow's MULDIV255 / DIV255: (a * b + 128) / 255 rounded the way its integer trick rounds.
inline int div255(int v) {
  int t = v + 128;
  return ((t >> 8) + t) >> 8;
}

// RGBA -> RGB on a white background: Image.new("RGB", size, white).paste(rgba, mask=alpha).
Image composite_on_white(const Image& rgba) {
  Image out(rgba.width, rgba.height, 3);
  const size_t n = size_t(rgba.width) * rgba.height;
  const uint8_t* s = rgba.pixels.data();
  uint8_t* d = out.pixels.data();
  for (size_t i = 0; i < n; ++i, s += 4, d += 3) {
    const int a = s[3];
    for (int c = 0; c < 3; ++c) d[c] = uint8_t(div255(255 * (255 - a) + s[c] * a));
  }
  return out;
}

// PIL's decompression-bomb rule at open: a header claiming more than twice the pixel limit is refused before
// any pixel is decoded (before the draft reduction), with the message clap_edge/core/images.py gives.
void check_header(const std::string& path, int64_t w, int64_t h, int64_t max_pixels) {
  if (max_pixels > 0 && w * h > 2 * max_pixels)
    fail(path, "image is too large to decode (" + std::to_string(w * h) + " pixels, limit " +
                   std::to_string(2 * max_pixels) + ")");
}

void check_pixels(const std::string& path, int64_t w, int64_t h, int64_t max_pixels) {
  if (max_pixels > 0 && w * h > max_pixels)
    fail(path, "image is too large to decode (" + std::to_string(w) + "x" + std::to_string(h) +
                   " pixels, limit " + std::to_string(max_pixels) + ")");
}

// ---- JPEG ------------------------------------------------------------------------------------------

struct JpegError {
  jpeg_error_mgr pub;
  jmp_buf jump;
  bool truncated = false;
  char message[JMSG_LENGTH_MAX] = {0};
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

void jpeg_emit_message(j_common_ptr cinfo, int level) {
  // Warnings are ignored as Pillow ignores them, except premature end of data: Pillow reports a truncated file.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(cinfo->err)->truncated = true;
}

// PIL's JpegImageFile.draft: the largest of 8/4/2/1 that keeps the image at least draft_w x draft_h.
int draft_scale(int w, int h, int draft_w, int draft_h) {
  if (draft_w <= 0 || draft_h <= 0) return 1;
  const int scale = std::min(w / draft_w, h / draft_h);
  for (int s : {8, 4, 2}) if (scale >= s) return s;
  return 1;
}

Image decode_jpeg(const std::string& path, const std::vector<uint8_t>& data, const DecodeOptions& opt, int* orientation) {
  jpeg_decompress_struct cinfo {};
  JpegError err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = jpeg_error_exit;
  err.pub.emit_message = jpeg_emit_message;
  Image raw;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    fail(path, std::string("cannot decode image: ") + err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  if (opt.max_pixels > 0 && int64_t(cinfo.image_width) * cinfo.image_height > 2 * opt.max_pixels) {
    const int64_t w = cinfo.image_width, h = cinfo.image_height;
    jpeg_destroy_decompress(&cinfo);
    check_header(path, w, h, opt.max_pixels);
  }
  *orientation = 1;
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      *orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  int channels;
  switch (cinfo.num_components) {
    case 1: cinfo.out_color_space = JCS_GRAYSCALE; channels = 1; break;
    case 3: cinfo.out_color_space = JCS_RGB; channels = 3; break;
    case 4: cinfo.out_color_space = JCS_CMYK; channels = 4; break;
    default: jpeg_destroy_decompress(&cinfo); fail(path, "cannot decode image: unsupported JPEG colour layout");
  }
  // The draft size is in the displayed frame; a 90-degree EXIF rotation swaps it into the stored frame.
  int dw = opt.draft_width, dh = opt.draft_height;
  if (*orientation >= 5 && *orientation <= 8) std::swap(dw, dh);
  const int scale = draft_scale(int(cinfo.image_width), int(cinfo.image_height), dw, dh);
  if (scale > 1) {
    cinfo.scale_num = 1;
    cinfo.scale_denom = scale;
  }
  jpeg_calc_output_dimensions(&cinfo);
  if (opt.max_pixels > 0 && int64_t(cinfo.output_width) * cinfo.output_height > opt.max_pixels) {
    const auto w = cinfo.output_width, h = cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    check_pixels(path, w, h, opt.max_pixels);
  }
  jpeg_start_decompress(&cinfo);
  raw = Image(int(cinfo.output_width), int(cinfo.output_height), channels);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = raw.row(int(cinfo.output_scanline));
    jpeg_read_scanlines(&cinfo, &row, 1);
    if (err.truncated) break;
  }
  if (!err.truncated) jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (err.truncated) fail(path, "cannot decode image: image file is truncated");
  if (channels == 4) {
    // CMYK;I: Pillow inverts the stored samples (Adobe convention), then cmyk2rgb: nk - c * nk / 255.
    Image rgb(raw.width, raw.height, 3);
    const size_t n = size_t(raw.width) * raw.height;
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* s = &raw.pixels[i * 4];
      const int nk = s[3];  // 255 - k, with k = 255 - stored
      for (int c = 0; c < 3; ++c) {
        const int v = 255 - s[c];
        rgb.pixels[i * 3 + c] = uint8_t(std::max(0, nk - div255(v * nk)));
      }
    }
    return rgb;
  }
  if (channels == 1) {  // L -> RGB: Pillow replicates the grey level
    Image rgb(raw.width, raw.height, 3);
    for (size_t i = 0; i < raw.pixels.size(); ++i) rgb.pixels[3 * i] = rgb.pixels[3 * i + 1] = rgb.pixels[3 * i + 2] = raw.pixels[i];
    return rgb;
  }
  return raw;
}

// ---- PNG -------------------------------------------------------------------------------------------

struct PngReader {
  const std::vector<uint8_t>* data;
  size_t pos = 0;
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->pos + n > r->data->size()) png_error(png, "image file is truncated");
  std::memcpy(out, r->data->data() + r->pos, n);
  r->pos += n;
}

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* message = static_cast<std::string*>(png_get_error_ptr(png));
  *message = msg;
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

Image decode_png(const std::string& path, const std::vector<uint8_t>& data, const DecodeOptions& opt, int* orientation) {
  std::string message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(path, "cannot decode image: out of memory");
  }
  PngReader reader{&data};
  std::vector<uint8_t> buffer;
  std::vector<png_bytep> rows;
  png_uint_32 w = 0, h = 0;
  int depth = 0, color = 0, channels = 0;
  bool grey16 = false;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(path, "cannot decode image: " + message);
  }
  png_set_read_fn(png, &reader, png_read_mem);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  png_get_IHDR(png, info, &w, &h, &depth, &color, nullptr, nullptr, nullptr);
  if (opt.max_pixels > 0 && int64_t(w) * h > 2 * opt.max_pixels) {
    png_destroy_read_struct(&png, &info, nullptr);
    check_header(path, w, h, opt.max_pixels);
  }
  if (opt.max_pixels > 0 && int64_t(w) * h > opt.max_pixels) {
    png_destroy_read_struct(&png, &info, nullptr);
    check_pixels(path, w, h, opt.max_pixels);
  }
  const bool has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  if (color == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    if (has_trns) png_set_tRNS_to_alpha(png);  // Pillow: P with transparency -> RGBA -> composited
  } else if (color == PNG_COLOR_TYPE_GRAY && depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);
  }
  // Pillow keeps 16-bit grey as I;16 (scaled later); every other 16-bit layout keeps the high byte.
  grey16 = depth == 16 && color == PNG_COLOR_TYPE_GRAY;
  if (depth == 16 && !grey16) png_set_strip_16(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  channels = png_get_channels(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  buffer.resize(rowbytes * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = buffer.data() + y * rowbytes;
  png_read_image(png, rows.data());
  png_read_end(png, info);
  *orientation = 1;
#ifdef PNG_eXIf_SUPPORTED
  png_bytep exif = nullptr;
  png_uint_32 exif_len = 0;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif && exif_len > 0) *orientation = exif_orientation(exif, exif_len);
#endif
  png_destroy_read_struct(&png, &info, nullptr);

  Image out(int(w), int(h), 3);
  const size_t n = size_t(w) * h;
  if (grey16) {
    for (size_t i = 0; i < n; ++i) {
      const uint32_t v = (uint32_t(buffer[2 * i]) << 8) | buffer[2 * i + 1];
      const uint8_t g = uint8_t((v * 255 + 32767) / 65535);
      out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = g;
    }
    return out;
  }
  if (channels == 1 || channels == 3) {
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < 3; ++c) out.pixels[3 * i + c] = buffer[i * channels + (channels == 1 ? 0 : c)];
    return out;
  }
  // grey + alpha (2) or RGBA (4): expand to RGBA, composite on white
  Image rgba(int(w), int(h), 4);
  for (size_t i = 0; i < n; ++i) {
    for (int c = 0; c < 3; ++c) rgba.pixels[4 * i + c] = buffer[i * channels + (channels == 2 ? 0 : c)];
    rgba.pixels[4 * i + 3] = buffer[i * channels + channels - 1];
  }
  return composite_on_white(rgba);
}

// Pillow's Image.transpose for EXIF orientations 2..8 (ImageOps.exif_transpose).
Image apply_orientation(const Image& in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const bool swap = orientation >= 5;
  const int W = in.width, H = in.height, C = in.channels;
  Image out(swap ? H : W, swap ? W : H, C);
  for (int y = 0; y < out.height; ++y) {
    uint8_t* d = out.row(y);
    for (int x = 0; x < out.width; ++x, d += C) {
      int sx, sy;
      switch (orientation) {
        case 2: sx = W - 1 - x; sy = y; break;          // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;  // ROTATE_180
        case 4: sx = x; sy = H - 1 - y; break;          // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break;                  // TRANSPOSE
        case 6: sx = y; sy = H - 1 - x; break;          // ROTATE_270 (clockwise 90)
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;  // TRANSVERSE
        default: sx = W - 1 - y; sy = x; break;         // 8: ROTATE_90 (counter-clockwise)
      }
      std::memcpy(d, in.row(sy) + size_t(sx) * C, C);
    }
  }
  return out;
}

}  // namespace

Image load_image(const std::string& path, const DecodeOptions& options) {
  const std::vector<uint8_t> data = read_file(path);  // a JPEG or a PNG by its magic bytes
  int orientation = 1;
  Image img = is_jpeg(data.data(), data.size()) ? decode_jpeg(path, data, options, &orientation)
                                               : decode_png(path, data, options, &orientation);
  return apply_orientation(img, orientation);
}

}  // namespace clap_edge
