// engine_choice BUNDLE GPU|TENSORRT_VERSION|PRECISION...: for each query, the backend `auto` resolves to
// (engines.cpp auto_backend) in a TensorRT build on that GPU, one word per line ("tensorrt" / "openvino"); one
// line "refused: <message>" when the bundle cannot be opened. tests/cpp/engine_choice_check.py compares it with
// the Python selection.
#include <iostream>
#include <string>

#include "../../runtime/cpp/src/engines.hpp"
#include "clap_edge/bundle.hpp"
#include "clap_edge/errors.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: engine_choice BUNDLE GPU|TENSORRT_VERSION|PRECISION...\n";
    return 2;
  }
  try {
    const auto bundle = clap_edge::Bundle::open(argv[1]);
    for (int i = 2; i < argc; ++i) {
      const std::string q = argv[i];
      const auto a = q.find('|'), b = q.find('|', a + 1);
      std::cout << clap_edge::auto_backend(*bundle, true, q.substr(0, a), q.substr(a + 1, b - a - 1), q.substr(b + 1))
                << "\n";
    }
  } catch (const std::exception& e) {
    std::cout << "refused: " << e.what() << "\n";
  }
  return 0;
}
