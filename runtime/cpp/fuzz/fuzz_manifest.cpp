// libFuzzer harness: manifest.json text -> parse_manifest_json -> validate_manifest (manifest.cpp), the path
// every bundle's manifest takes. Bad input must end in clap_edge::Error (one line); anything else (another
// exception, a sanitizer report, a hang) is a finding. Built and run by bench/native_fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "clap_edge/errors.hpp"
#include "manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto j = clap_edge::parse_manifest_json(text, "fuzz/manifest.json");
    (void)clap_edge::validate_manifest(j, "fuzz/manifest.json");
  } catch (const clap_edge::Error& e) {
    if (std::string(e.what()).find('\n') != std::string::npos) __builtin_trap();  // errors are one line
  }
  return 0;
}
