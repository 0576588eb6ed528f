// Decoding from memory (decode.cpp): the step after load_image has read a file, also the fuzzers' entry point.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "clap_edge/image.hpp"

namespace clap_edge {

// Decode JPEG or PNG bytes (told apart by their magic bytes) into RGB with the EXIF orientation applied.
// label names the source in error messages. Throws ImageError.
Image decode_image(const std::string& label, const std::vector<uint8_t>& data, const DecodeOptions& options = {});

}  // namespace clap_edge
