// The bundle's checked file access: manifest.json and manifest.sha256 read within bounds (never blocking on a
// FIFO, never following into a device), listed files lstat-ed (a symbolic link is refused, as the Python
// reader does), their size compared with the manifest and their magic bytes checked before they are hashed.
#include <algorithm>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "clap_edge/bundle.hpp"
#include "clap_edge/errors.hpp"
#include "manifest.hpp"
#include <nlohmann/json.hpp>

namespace clap_edge {
namespace fs = std::filesystem;

namespace {

const char* const kManifest = "manifest.json";
const char* const kClassesFile = "classes.safetensors";
const char* const kManifestDigest = "manifest.sha256";  // "<sha256 hex>  manifest.json" (sha256sum -c format)
constexpr size_t kManifestBytes = size_t(64) << 20;

// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "directory";
  if (S_ISFIFO(mode)) return "named pipe (FIFO)";  // clap_edge.core.io.file_kind's words
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  return "special file";
}

// Python's clap_edge.core.io.read_regular: open without blocking, fstat, refuse non-regular or oversized files.
// Returns false if the file does not exist; throws BundleError("<where>: cannot read it (...)") otherwise.
bool read_regular(const fs::path& path, size_t limit, const std::string& where, std::string& out) {
  Fd f{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  if (f.fd < 0) {
    if (errno == ENOENT) return false;
    throw BundleError(where + ": cannot read it (" + std::strerror(errno) + ")");
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw BundleError(where + ": cannot read it (" + std::strerror(errno) + ")");
  if (S_ISDIR(st.st_mode)) throw BundleError(where + ": cannot read it (" + path.string() + " is a directory)");
  if (!S_ISREG(st.st_mode)) throw BundleError(where + ": cannot read it (not a regular file (" + file_kind(st.st_mode) + "))");
  if (size_t(st.st_size) > limit)
    throw BundleError(where + ": cannot read it (" + std::to_string(st.st_size) + " bytes, more than the " +
                      std::to_string(limit) + " allowed)");
  out.assign(size_t(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::pread(f.fd, &out[got], out.size() - got, off_t(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += size_t(n);
  }
  out.resize(got);
  return true;
}

// export/bundle/filehead.py: can the first bytes be the format the file name says?
std::string head_problem(const std::string& name, const unsigned char* head, size_t n, int64_t size) {
  auto ends = [&](const char* ext) {
    const size_t k = std::strlen(ext);
    return name.size() >= k && name.compare(name.size() - k, k, ext) == 0;
  };
  if (ends(".safetensors")) {
    uint64_t len = 0;
    for (int i = 7; i >= 0 && n >= 8; --i) len = (len << 8) | head[i];
    if (n < 9 || len < 2 || size < 8 || len > uint64_t(size - 8) || head[8] != '{')
      return "is not a safetensors file (bad header)";
  } else if (ends(".onnx")) {
    if (n < 1 || head[0] != 0x08) return "is not an ONNX model (bad first bytes)";
  } else if (ends(".npy")) {
    if (n < 6 || std::memcmp(head, "\x93NUMPY", 6) != 0) return "is not a .npy file (bad first bytes)";
  }
  return "";
}

using DigestCtx = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

DigestCtx sha256_start() {
  DigestCtx ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw BundleError("OpenSSL sha256 unavailable");
  return ctx;
}

std::string sha256_hex(EVP_MD_CTX* ctx) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string sha256_bytes(const void* data, size_t size) {
  DigestCtx ctx = sha256_start();
  EVP_DigestUpdate(ctx.get(), data, size);
  return sha256_hex(ctx.get());
}

[[noreturn]] void throw_modified(const std::string& root, const std::string& name, const std::string& actual,
                                 const std::string& want) {
  throw BundleError(root + ": '" + name + "' is corrupt or was modified: sha256 " + actual.substr(0, 16) +
                    "... does not match the manifest's " + want.substr(0, 16) + "...");
}
// Hash an open descriptor from offset 0 to its end.
std::string sha256_fd(int fd) {
  DigestCtx ctx = sha256_start();
  std::vector<char> buf(1 << 20);
  off_t off = 0;
  for (;;) {
    const ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw BundleError(std::string("cannot read file (") + std::strerror(errno) + ")");
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), size_t(n));
    off += n;
  }
  return sha256_hex(ctx.get());
}

bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

// manifest.sha256: exactly "<hex>  [*]manifest.json" (whitespace-separated), the hex the manifest's sha256.
void check_manifest_digest(const fs::path& root, const std::string& label, const std::string& manifest_text) {
  std::string text;
  if (!read_regular(root / kManifestDigest, 4096, label + ": " + kManifestDigest, text))
    throw BundleError(label + ": missing file '" + kManifestDigest + "' (the manifest's checksum); re-export the bundle");
  std::vector<std::string> words;
  for (size_t i = 0; i < text.size();) {
    while (i < text.size() && is_space(text[i])) ++i;
    size_t j = i;
    while (j < text.size() && !is_space(text[j])) ++j;
    if (j > i) words.push_back(text.substr(i, j - i));
    i = j;
  }
  const std::string actual = sha256_bytes(manifest_text.data(), manifest_text.size());
  std::string want = words.empty() ? "" : words[0], name = words.size() > 1 ? words[1] : "";
  for (auto& ch : want) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  name.erase(0, name.find_first_not_of('*') == std::string::npos ? name.size() : name.find_first_not_of('*'));
  if (words.size() != 2 || want != actual || name != kManifest)
    throw BundleError(label + ": " + kManifest + " was modified after export: its sha256 " + actual.substr(0, 16) +
                      "... does not match " + kManifestDigest);
}
}  // namespace

std::string sha256_file(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  struct stat st {};
  if (f.fd < 0 || ::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode))
    throw BundleError(path + ": cannot read file (missing or not a regular file)");
  return sha256_fd(f.fd);
}

std::shared_ptr<Bundle> Bundle::open(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    const char* problem = fs::exists(root, ec) ? "a file, not a directory (unpack a .tar bundle first)"
                                               : "no such file or directory";
    throw BundleError(dir + ": not a bundle directory (" + problem + ")");
  }
  std::string text;
  if (!read_regular(root / kManifest, kManifestBytes, dir + ": " + kManifest, text))
    throw BundleError(dir + ": missing file '" + kManifest + "' (not a clap-edge bundle?)");
  const std::string where = dir + ": " + kManifest;
  const auto j = parse_manifest_json(text, where);  // JSON and schema_version first, then the digest, then fields
  check_manifest_digest(root, dir, text);
  std::shared_ptr<Bundle> bundle(new Bundle(dir, validate_manifest(j, where)));
  if (bundle->has_file(kClassesFile)) bundle->load_classes();  // as Bundle.open(verify=True) in Python
  return bundle;
}

// classes.safetensors (sha256-checked): its class_embeddings tensor is F32 [C, d] as the manifest says, and
// class_bias F32 [C] when the manifest's classes.bias is true; both finite (as Bundle.class_tensors in Python).
void Bundle::load_classes() {
  const std::vector<char> data = read_file(kClassesFile);
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<unsigned char>(data[size_t(i)]);  // head_problem: fits
  std::string shape = "?", dtype = "?", bias_shape = "none", bias_dtype = "F32";
  uint64_t w_begin = 0, b_begin = 0;
  try {
    const auto header = nlohmann::json::parse(data.begin() + 8, data.begin() + 8 + std::ptrdiff_t(len));
    const auto& t = header.at("class_embeddings");
    shape.clear();
    for (const auto& d : t.at("shape")) shape += (shape.empty() ? "[" : ", ") + d.dump();
    shape += "]";
    dtype = t.at("dtype").get<std::string>();
    w_begin = t.at("data_offsets").at(0).get<uint64_t>();
    if (header.contains("class_bias")) {
      const auto& b = header.at("class_bias");
      bias_shape.clear();
      for (const auto& d : b.at("shape")) bias_shape += (bias_shape.empty() ? "[" : ", ") + d.dump();
      bias_shape = bias_shape.empty() ? "[]" : bias_shape + "]";
      bias_dtype = b.at("dtype").get<std::string>();
      b_begin = b.at("data_offsets").at(0).get<uint64_t>();
    }
    // as safetensors in Python: the tensor's data must exist and the file end where the data ends
    uint64_t end = 0;
    for (const auto& [key, tensor] : header.items()) {
      if (key == "__metadata__") continue;
      const auto& off = tensor.at("data_offsets");
      const uint64_t b = off.at(0).get<uint64_t>(), e = off.at(1).get<uint64_t>();
      if (off.size() != 2 || b > e) throw std::runtime_error("invalid data_offsets for " + key);
      end = std::max(end, e);
    }
    if (end != uint64_t(data.size()) - 8 - len) throw std::runtime_error("incomplete metadata, file not fully covered");
  } catch (const std::exception& e) {
    throw BundleError(root_ + ": " + kClassesFile + " is unreadable (" + e.what() + ")");
  }
  const std::string want = "[" + std::to_string(manifest_.class_names.size()) + ", " + std::to_string(manifest_.embed_dim) + "]";
  if (shape != want)
    throw BundleError(root_ + ": " + kClassesFile + " has shape " + shape + " but the manifest lists " +
                      std::to_string(manifest_.class_names.size()) + " classes of dimension " +
                      std::to_string(manifest_.embed_dim));
  const size_t C = manifest_.class_names.size(), D = size_t(manifest_.embed_dim);
  const char* base = data.data() + 8 + len;
  auto floats = [&](uint64_t begin, size_t count, std::vector<float>& out, const char* name, const std::string& dt) {
    out.resize(count);
    if (dt == "F32") std::memcpy(out.data(), base + begin, count * sizeof(float));
    size_t bad = 0;
    for (float v : out) bad += !std::isfinite(v);
    if (dt != "F32" || bad)
      throw BundleError(root_ + ": " + kClassesFile + " must hold finite float32 values (" + name + ": dtype " +
                        (dt == "F32" ? std::string("float32") : dt) + ", " + std::to_string(dt == "F32" ? bad : 0) +
                        " non-finite)");
  };
  floats(w_begin, C * D, class_matrix_, "class_embeddings", dtype);
  if (manifest_.class_bias) {
    if (bias_shape != "[" + std::to_string(C) + "]")
      throw BundleError(root_ + ": " + kClassesFile + " must hold class_bias of shape [" + std::to_string(C) +
                        "] (the manifest's classes.bias is true), found " + bias_shape);
    floats(b_begin, C, class_bias_, "class_bias", bias_dtype);
  }
}

// lstat (a symbolic link is refused, as in Python), open without blocking or following, fstat, size against the
// manifest, magic bytes: an open descriptor of a regular file that may be what its name says.
int Bundle::open_listed(const std::string& name) const {
  if (!manifest_.files.count(name)) throw BundleError(root_ + ": '" + name + "' is not listed in " + kManifest);
  const std::string path = (fs::path(root_) / name).string();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0)
    throw BundleError(root_ + ": missing file '" + name + "' (listed in " + kManifest + ")");
  if (S_ISLNK(st.st_mode)) throw BundleError(root_ + ": '" + name + "' is a symbolic link");
  if (!S_ISREG(st.st_mode)) throw BundleError(root_ + ": '" + name + "' is not a regular file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw BundleError(root_ + ": '" + name + "' cannot be opened (" + std::strerror(errno) + ")");
  Fd guard{fd};
  const int64_t want = manifest_.files.at(name).bytes;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) throw BundleError(root_ + ": '" + name + "' is not a regular file");
  if (int64_t(st.st_size) != want)
    throw BundleError(root_ + ": '" + name + "' has " + std::to_string(st.st_size) + " bytes but the manifest lists " +
                      std::to_string(want) + " bytes");
  unsigned char head[16];
  const ssize_t n = ::pread(fd, head, sizeof head, 0);
  const std::string problem = head_problem(name, head, n > 0 ? size_t(n) : 0, want);
  if (!problem.empty()) throw BundleError(root_ + ": '" + name + "' " + problem);
  guard.fd = -1;
  return fd;
}

std::string Bundle::file(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!verified_.count(name)) {
    Fd f{open_listed(name)};
    const std::string& want = manifest_.files.at(name).sha256;
    const std::string actual = sha256_fd(f.fd);
    if (actual != want) throw_modified(root_, name, actual, want);
    verified_.insert(name);
  }
  return (fs::path(root_) / name).string();
}

std::vector<char> Bundle::read_file(const std::string& name) const {
  Fd f{open_listed(name)};
  std::vector<char> data(size_t(manifest_.files.at(name).bytes));
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::pread(f.fd, data.data() + got, data.size() - got, off_t(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += size_t(n);
  }
  data.resize(got);
  const std::string actual = sha256_bytes(data.data(), data.size()), &want = manifest_.files.at(name).sha256;
  if (actual != want) throw_modified(root_, name, actual, want);  // hashed in memory: the bytes checked are used
  return data;
}

}  // namespace clap_edge
