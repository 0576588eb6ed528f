#include "common.hpp"

#include <algorithm>
#include <filesystem>
#include <iostream>
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

std::vector<std::string> list_images(const std::vector<std::string>& paths) {
  std::vector<std::string> found;
  for (const auto& arg : paths) {
    const fs::path p(pathlib_str(arg));
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> files;
      for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
           it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) break;
        if (it->is_regular_file(ec) && is_image_file(it->path())) files.push_back(it->path());
      }
      std::sort(files.begin(), files.end());  // element-wise, as sorted() on pathlib paths
      for (const auto& f : files) found.push_back(f.string());
    } else {
      found.push_back(p.string());
    }
  }
  return found;
}

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
  } catch (const std::exception& e) {
    std::cout.flush();
    fail(e.what());
  } catch (...) {
    std::cout.flush();
    fail("unexpected error");
  }
}

}  // namespace clap_edge::tools
