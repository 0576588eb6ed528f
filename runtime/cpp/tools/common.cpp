#include "common.hpp"

#include "json_line.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

namespace clap_edge::tools {
namespace fs = std::filesystem;

namespace {
const std::set<std::string> kExtensions{".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"};

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return kExtensions.count(ext) != 0;
}
}  // namespace

std::string pathlib_str(const std::string& path) {
  if (path.empty()) return ".";
  std::string out;
  const bool absolute = path[0] == '/';
  size_t i = 0;
  while (i <= path.size()) {
    const size_t j = std::min(path.find('/', i), path.size());
    const std::string part = path.substr(i, j - i);
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    i = j + 1;
  }
  if (absolute) return "/" + out;
  return out.empty() ? "." : out;
}

namespace {

// Python's order of str: by code point, a file-name byte that is not UTF-8 being U+DC80..U+DCFF (surrogateescape),
// which is not the byte order (U+E000..U+10FFFF sort after such a byte in Python, before it in bytes).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) out.push_back(next_code_point(s, i));
  return out;
}

bool python_less(const std::string& a, const std::string& b) { return code_points(a) < code_points(b); }

// sorted() on pathlib paths: part by part, each part as a Python str.
bool path_less(const std::string& a, const std::string& b) {
  std::vector<std::vector<uint32_t>> pa, pb;
  for (const auto& part : fs::path(a)) pa.push_back(code_points(part.string()));
  for (const auto& part : fs::path(b)) pb.push_back(code_points(part.string()));
  return pa < pb;
}

// Python's Path(folder) / name spelling.
std::string join(const std::string& folder, const std::string& name) {
  if (folder == ".") return name;
  return folder + (folder.back() == '/' ? "" : "/") + name;
}

enum class Kind { kDir, kFile, kSkip };

// As images.py _classify_entry: what a path is, following symbolic links, without opening it.
Kind classify_entry(const std::string& path, std::string* reason, struct stat* out = nullptr) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    struct stat lst {};
    if (err == ENOENT) *reason = ::lstat(path.c_str(), &lst) == 0 ? "broken symbolic link" : "no such file or directory";
    else if (err == EACCES || err == EPERM) *reason = "permission denied";
    else if (err == ELOOP) *reason = "symbolic link loop";
    else *reason = std::string("cannot stat it (") + std::strerror(err) + ")";
    return Kind::kSkip;
  }
  if (out) *out = st;
  if (S_ISDIR(st.st_mode)) return Kind::kDir;
  if (S_ISREG(st.st_mode)) return Kind::kFile;
  std::string kind = "special file";
  if (S_ISFIFO(st.st_mode)) kind = "named pipe (FIFO)";
  else if (S_ISSOCK(st.st_mode)) kind = "socket";
  else if (S_ISCHR(st.st_mode)) kind = "character device";
  else if (S_ISBLK(st.st_mode)) kind = "block device";
  *reason = "not a regular file (" + kind + ")";
  return Kind::kSkip;
}

using Key = std::pair<dev_t, ino_t>;

struct Walker {
  ScanResult* result;
  std::vector<std::string> found;
  std::map<Key, std::string> seen;
  std::deque<std::pair<std::string, std::vector<Key>>> links;  // symlinked folders, walked after the real ones

  void walk(const std::string& folder, const std::vector<Key>& ancestors) {
    struct stat st {};
    if (::stat(folder.c_str(), &st) != 0) {
      result->skipped.push_back({folder, std::string("cannot stat it (") + std::strerror(errno) + ")"});
      return;
    }
    const Key key{st.st_dev, st.st_ino};
    if (std::find(ancestors.begin(), ancestors.end(), key) != ancestors.end()) {
      result->skipped.push_back({folder, "symbolic link loop (back to " + seen[key] + ")"});
      return;
    }
    if (seen.count(key)) {
      result->skipped.push_back({folder, "same folder as " + seen[key] + ", already walked"});
      return;
    }
    seen[key] = folder;
    std::vector<std::pair<std::string, bool>> entries;  // name, is a symbolic link
    DIR* dir = ::opendir(folder.c_str());
    if (!dir) {
      const int err = errno;
      result->skipped.push_back({folder, err == EACCES || err == EPERM
                                             ? std::string("permission denied (cannot list the folder)")
                                             : std::string("cannot list the folder (") + std::strerror(err) + ")"});
      return;
    }
    while (const dirent* e = ::readdir(dir)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      struct stat lst {};
      entries.emplace_back(name, ::lstat(join(folder, name).c_str(), &lst) == 0 && S_ISLNK(lst.st_mode));
    }
    ::closedir(dir);
    std::sort(entries.begin(), entries.end(),  // by name, as sorted(os.scandir(...), key=name)
              [](const auto& x, const auto& y) { return python_less(x.first, y.first); });
    std::vector<Key> inner = ancestors;
    inner.push_back(key);
    for (const auto& [name, is_link] : entries) {
      const std::string path = join(folder, name);
      std::string reason;
      const Kind kind = classify_entry(path, &reason);
      if (kind == Kind::kDir && is_link) links.emplace_back(path, inner);
      else if (kind == Kind::kDir) walk(path, inner);
      else if (kind == Kind::kFile) (is_image_file(path) ? found : result->other_files).push_back(path);
      else result->skipped.push_back({path, reason});
    }
  }
};

}  // namespace

ScanResult scan_images(const std::vector<std::string>& paths) {
  ScanResult result;
  for (const auto& arg : paths) {
    const std::string p = pathlib_str(arg);
    std::string reason;
    const Kind kind = classify_entry(p, &reason);
    if (kind == Kind::kDir) {
      Walker w{&result, {}, {}, {}};
      w.walk(p, {});
      while (!w.links.empty()) {
        const auto [link, ancestors] = w.links.front();
        w.links.pop_front();
        w.walk(link, ancestors);
      }
      std::sort(w.found.begin(), w.found.end(), path_less);
      result.files.insert(result.files.end(), w.found.begin(), w.found.end());
    } else if (kind == Kind::kFile) {
      result.files.push_back(p);
    } else {
      result.skipped.push_back({p, reason});
    }
  }
  return result;
}

std::vector<std::string> list_images(const std::vector<std::string>& paths) { return scan_images(paths).files; }

int parse_int(const std::string& flag, const std::string& value, int min) {
  try {
    size_t used = 0;
    const int v = std::stoi(value, &used);
    if (used == value.size() && v >= min) return v;
  } catch (const std::exception&) {
  }
  fail(flag + " must be an integer >= " + std::to_string(min) + ", got '" + value + "'");
}

std::vector<int> parse_int_list(const std::string& flag, const std::string& value) {
  std::vector<int> out;
  size_t i = 0;
  while (i <= value.size()) {
    const size_t j = std::min(value.find(',', i), value.size());
    out.push_back(parse_int(flag, value.substr(i, j - i), 1));
    i = j + 1;
  }
  return out;
}

void fail(const std::string& message) {
  std::cerr << "error: " << message << std::endl;
  std::exit(kExitBadInput);
}

void usage_error(const std::string& usage, const std::string& message) {
  std::cerr << usage << "\nError: " << message << std::endl;
  std::exit(kExitBadInput);
}

int guarded_main(int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const std::bad_alloc&) {
    std::cout.flush();
    fail("out of memory");
  } catch (const std::exception& e) {  // a library's message may span lines (ov::Exception): its first one
    std::cout.flush();
    const std::string what = e.what();
    fail(what.substr(0, what.find('\n')));
  } catch (...) {
    std::cout.flush();
    fail("unexpected error");
  }
}

}  // namespace clap_edge::tools
