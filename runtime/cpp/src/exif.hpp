// The EXIF orientation tag (0x0112) of a TIFF-structured EXIF block, as Pillow's getexif().get(0x0112, 1).
#pragma once

#include <cstddef>
#include <cstdint>

namespace clap_edge {

// data: the TIFF header onwards ("II*\0" or "MM\0*"). Returns 1 (upright) when absent or unreadable.
int exif_orientation(const uint8_t* data, size_t size);

}  // namespace clap_edge
