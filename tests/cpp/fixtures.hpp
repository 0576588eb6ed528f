// The fixture folder written by make_fixtures.py (CTest passes it as CLAP_EDGE_FIXTURES), shared by the tests.
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

inline std::string fixtures() {
  const char* dir = std::getenv("CLAP_EDGE_FIXTURES");
  return dir ? dir : "";
}

// The reference images' file names, in the order of the Python reference tensors (ref/order.txt).
inline std::vector<std::string> image_names() {
  std::ifstream f(fixtures() + "/ref/order.txt");
  std::vector<std::string> names;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) names.push_back(line);
  return names;
}
