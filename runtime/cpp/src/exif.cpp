#include "exif.hpp"

namespace clap_edge {

int exif_orientation(const uint8_t* d, size_t n) {
  if (n < 8) return 1;
  bool little;
  if (d[0] == 'I' && d[1] == 'I') little = true;
  else if (d[0] == 'M' && d[1] == 'M') little = false;
  else return 1;
  auto u16 = [&](size_t o) -> uint32_t { return little ? d[o] | (d[o + 1] << 8) : (d[o] << 8) | d[o + 1]; };
  auto u32 = [&](size_t o) -> uint32_t {
    return little ? d[o] | (d[o + 1] << 8) | (d[o + 2] << 16) | (uint32_t(d[o + 3]) << 24)
                  : (uint32_t(d[o]) << 24) | (d[o + 1] << 16) | (d[o + 2] << 8) | d[o + 3];
  };
  if (u16(2) != 42) return 1;
  const size_t ifd = u32(4);
  if (ifd + 2 > n) return 1;
  const uint32_t count = u16(ifd);
  for (uint32_t i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + size_t(i) * 12;
    if (e + 12 > n) return 1;
    if (u16(e) != 0x0112) continue;
    const uint32_t type = u16(e + 2);
    if (type == 3) return int(u16(e + 8));   // SHORT, stored in the value field
    if (type == 4) return int(u32(e + 8));   // LONG (unusual but legal)
    return 1;
  }
  return 1;
}

}  // namespace clap_edge
