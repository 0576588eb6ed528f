// A minimal .npy reader for the test references (little-endian float32 or uint8, C order).
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

template <typename T>
struct Array {
  std::vector<int64_t> shape;
  std::vector<T> data;
};

template <typename T>
Array<T> load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  f.read(magic, 8);
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t n;
    f.read(reinterpret_cast<char*>(&n), 2);
    header_len = n;
  } else {
    f.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  f.read(header.data(), header_len);
  const std::string want = sizeof(T) == 4 ? "<f4" : "|u1";
  if (header.find(want) == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": expected " + want + " C-order array, header " + header);
  Array<T> a;
  const auto open = header.find('(', header.find("shape")), close = header.find(')', open);
  std::string dims = header.substr(open + 1, close - open - 1);
  size_t count = 1, i = 0;
  while (i < dims.size()) {
    const size_t j = std::min(dims.find(',', i), dims.size());
    const std::string d = dims.substr(i, j - i);
    if (d.find_first_of("0123456789") != std::string::npos) {
      a.shape.push_back(std::stoll(d));
      count *= size_t(a.shape.back());
    }
    i = j + 1;
  }
  a.data.resize(count);
  f.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(count * sizeof(T)));
  if (!f) throw std::runtime_error(path + ": truncated");
  return a;
}

}  // namespace npy
