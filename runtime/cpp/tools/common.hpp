// Shared by the command-line tools: argument helpers and listing image files as `clap-edge classify` does.
#pragma once

#include <string>
#include <vector>

namespace clap_edge::tools {

constexpr int kExitBadInput = 2;

// A path that was found but will not be classified, and why (clap_edge.core.images.Skipped).
struct Skipped {
  std::string path;
  std::string reason;
};

// As clap_edge.core.images.scan_images: folders walked recursively (symlinked folders after the real ones, a
// link back to an ancestor is a loop, a folder reached twice is walked once), broken links / loops / FIFOs /
// devices skipped with the same reasons and never opened, files in folders without an image extension counted.
struct ScanResult {
  std::vector<std::string> files;
  std::vector<Skipped> skipped;
  std::vector<std::string> other_files;
};
ScanResult scan_images(const std::vector<std::string>& paths);

// Files named directly, plus the image files under each folder (walked recursively, sorted by path parts),
// with the same extensions and the same path spelling as clap_edge.core.images.list_images.
std::vector<std::string> list_images(const std::vector<std::string>& paths);

// Python's pathlib spelling of a path: "." and empty parts dropped ("./a//b/" -> "a/b").
std::string pathlib_str(const std::string& path);

int parse_int(const std::string& flag, const std::string& value, int min);
std::vector<int> parse_int_list(const std::string& flag, const std::string& value);

// "error: <message>" on stderr and exit code 2, as the Python CLI does for a ClapEdgeError.
[[noreturn]] void fail(const std::string& message);
// click's usage error: "Usage: ...\nError: <message>" and exit code 2.
[[noreturn]] void usage_error(const std::string& usage, const std::string& message);

}  // namespace clap_edge::tools
