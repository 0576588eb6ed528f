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
#include "decode.hpp"
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

// Everything a libjpeg decode touches lives here, outside the frame that calls setjmp (which only holds a
// pointer to it): after a longjmp no local of that frame has changed since setjmp, so none is indeterminate,
// and the destructor frees libjpeg's state and the pixels whichever way the decode ends.
struct JpegJob {
  jpeg_decompress_struct cinfo{};
  JpegError err;
  bool created = false;
  Image raw;
  int orientation = 1;
  // a problem found between libjpeg calls (not by libjpeg): reported after the libjpeg steps return
  enum { kNone, kHeaderTooLarge, kTooLarge, kLayout } problem = kNone;
  int64_t w = 0, h = 0;
  ~JpegJob() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// The libjpeg calls; false when libjpeg aborted (job->err.message says why). No C++ object is created in
// this frame, so the longjmp skips no destructor.
bool run_jpeg(JpegJob* job, const uint8_t* data, size_t size, const DecodeOptions* opt) {
  job->cinfo.err = jpeg_std_error(&job->err.pub);
  job->err.pub.error_exit = jpeg_error_exit;
  job->err.pub.emit_message = jpeg_emit_message;
  if (setjmp(job->err.jump)) return false;
  jpeg_create_decompress(&job->cinfo);
  job->created = true;
  j_decompress_ptr c = &job->cinfo;  // not modified after setjmp
  jpeg_mem_src(c, data, static_cast<unsigned long>(size));
  jpeg_save_markers(c, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(c, TRUE);
  job->w = c->image_width;
  job->h = c->image_height;
  if (opt->max_pixels > 0 && job->w * job->h > 2 * opt->max_pixels) {
    job->problem = JpegJob::kHeaderTooLarge;
    return true;
  }
  for (jpeg_saved_marker_ptr m = c->marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      job->orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  switch (c->num_components) {
    case 1: c->out_color_space = JCS_GRAYSCALE; break;
    case 3: c->out_color_space = JCS_RGB; break;
    case 4: c->out_color_space = JCS_CMYK; break;
    default: job->problem = JpegJob::kLayout; return true;
  }
  // The draft size is in the displayed frame; a 90-degree EXIF rotation swaps it into the stored frame.
  const bool rotated = job->orientation >= 5 && job->orientation <= 8;
  const int scale = draft_scale(int(c->image_width), int(c->image_height), rotated ? opt->draft_height : opt->draft_width,
                                rotated ? opt->draft_width : opt->draft_height);
  if (scale > 1) {
    c->scale_num = 1;
    c->scale_denom = unsigned(scale);
  }
  jpeg_calc_output_dimensions(c);
  job->w = c->output_width;
  job->h = c->output_height;
  if (opt->max_pixels > 0 && job->w * job->h > opt->max_pixels) {
    job->problem = JpegJob::kTooLarge;
    return true;
  }
  jpeg_start_decompress(c);
  job->raw = Image(int(c->output_width), int(c->output_height), c->out_color_components);
  while (c->output_scanline < c->output_height) {
    JSAMPROW row = job->raw.row(int(c->output_scanline));
    jpeg_read_scanlines(c, &row, 1);
    if (job->err.truncated) return true;
  }
  jpeg_finish_decompress(c);
  return true;
}

Image decode_jpeg(const std::string& path, const std::vector<uint8_t>& data, const DecodeOptions& opt, int* orientation) {
  const auto job = std::make_unique<JpegJob>();
  if (!run_jpeg(job.get(), data.data(), data.size(), &opt)) fail(path, std::string("cannot decode image: ") + job->err.message);
  switch (job->problem) {
    case JpegJob::kHeaderTooLarge: check_header(path, job->w, job->h, opt.max_pixels); break;
    case JpegJob::kTooLarge: check_pixels(path, job->w, job->h, opt.max_pixels); break;
    case JpegJob::kLayout: fail(path, "cannot decode image: unsupported JPEG colour layout");
    case JpegJob::kNone: break;
  }
  if (job->err.truncated) fail(path, "cannot decode image: image file is truncated");
  *orientation = job->orientation;
  const Image& raw = job->raw;
  if (raw.channels == 4) {
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
  if (raw.channels == 1) {  // L -> RGB: Pillow replicates the grey level
    Image rgb(raw.width, raw.height, 3);
    for (size_t i = 0; i < raw.pixels.size(); ++i) rgb.pixels[3 * i] = rgb.pixels[3 * i + 1] = rgb.pixels[3 * i + 2] = raw.pixels[i];
    return rgb;
  }
  return std::move(job->raw);
}

// ---- PNG -------------------------------------------------------------------------------------------

struct PngReader {
  const std::vector<uint8_t>* data;
  size_t pos = 0;
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (n > r->data->size() - r->pos) png_error(png, "image file is truncated");
  std::memcpy(out, r->data->data() + r->pos, n);
  r->pos += n;
}

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* message = static_cast<std::string*>(png_get_error_ptr(png));
  *message = msg;
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

// As JpegJob: the state of one libpng decode, outside the frame that calls setjmp.
struct PngJob {
  std::string message;
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngReader reader;
  std::vector<uint8_t> buffer;
  std::vector<png_bytep> rows;
  png_uint_32 w = 0, h = 0;
  int depth = 0, color = 0, channels = 0;
  bool grey16 = false;
  int orientation = 1;
  enum { kNone, kHeaderTooLarge, kTooLarge } problem = kNone;
  ~PngJob() { png_destroy_read_struct(&png, &info, nullptr); }
};

bool run_png(PngJob* job, const DecodeOptions* opt) {
  if (setjmp(png_jmpbuf(job->png))) return false;
  png_structp png = job->png;  // not modified after setjmp
  png_infop info = job->info;
  png_set_read_fn(png, &job->reader, png_read_mem);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  // No chunk can hold more bytes than the file: a chunk claiming more (fuzzing found a 940-byte PNG whose eXIf
  // chunk claims 2 GB) is refused before libpng allocates it, and ends as the truncated file it is.
  png_set_chunk_malloc_max(png, job->reader.data->size() + 1);
  png_read_info(png, info);
  png_get_IHDR(png, info, &job->w, &job->h, &job->depth, &job->color, nullptr, nullptr, nullptr);
  const int64_t pixels = int64_t(job->w) * job->h;
  if (opt->max_pixels > 0 && pixels > 2 * opt->max_pixels) {
    job->problem = PngJob::kHeaderTooLarge;
    return true;
  }
  if (opt->max_pixels > 0 && pixels > opt->max_pixels) {
    job->problem = PngJob::kTooLarge;
    return true;
  }
  if (job->color == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    // Pillow: P with transparency -> RGBA -> composited
    if (png_get_valid(png, info, PNG_INFO_tRNS) != 0) png_set_tRNS_to_alpha(png);
  } else if (job->color == PNG_COLOR_TYPE_GRAY && job->depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);
  }
  // Pillow keeps 16-bit grey as I;16 (scaled later); every other 16-bit layout keeps the high byte.
  job->grey16 = job->depth == 16 && job->color == PNG_COLOR_TYPE_GRAY;
  if (job->depth == 16 && !job->grey16) png_set_strip_16(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  job->channels = png_get_channels(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  job->buffer.resize(rowbytes * job->h);
  job->rows.resize(job->h);
  for (png_uint_32 y = 0; y < job->h; ++y) job->rows[y] = job->buffer.data() + y * rowbytes;
  png_read_image(png, job->rows.data());
  png_read_end(png, info);
#ifdef PNG_eXIf_SUPPORTED
  png_bytep exif = nullptr;
  png_uint_32 exif_len = 0;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif && exif_len > 0)
    job->orientation = exif_orientation(exif, exif_len);
#endif
  return true;
}

Image decode_png(const std::string& path, const std::vector<uint8_t>& data, const DecodeOptions& opt, int* orientation) {
  const auto job = std::make_unique<PngJob>();
  job->reader.data = &data;
  job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job->message, png_error_fn, png_warning_fn);
  job->info = job->png ? png_create_info_struct(job->png) : nullptr;
  if (!job->png || !job->info) fail(path, "cannot decode image: out of memory");
  if (!run_png(job.get(), &opt)) fail(path, "cannot decode image: " + job->message);
  if (job->problem == PngJob::kHeaderTooLarge) check_header(path, job->w, job->h, opt.max_pixels);
  if (job->problem == PngJob::kTooLarge) check_pixels(path, job->w, job->h, opt.max_pixels);
  *orientation = job->orientation;
  const std::vector<uint8_t>& buffer = job->buffer;
  const int channels = job->channels;
  Image out(int(job->w), int(job->h), 3);
  const size_t n = size_t(job->w) * job->h;
  if (job->grey16) {
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
  Image rgba(int(job->w), int(job->h), 4);
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

Image decode_image(const std::string& label, const std::vector<uint8_t>& data, const DecodeOptions& options) {
  int orientation = 1;
  Image img;
  if (is_jpeg(data.data(), data.size())) img = decode_jpeg(label, data, options, &orientation);
  else if (is_png(data.data(), data.size())) img = decode_png(label, data, options, &orientation);
  else fail(label, "cannot decode image: not an image file the runtime can read");
  return apply_orientation(img, orientation);
}

Image load_image(const std::string& path, const DecodeOptions& options) {
  return decode_image(path, read_file(path), options);  // a JPEG or a PNG by its magic bytes
}

}  // namespace clap_edge
