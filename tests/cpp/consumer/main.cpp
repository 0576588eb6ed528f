// Opens a bundle through the installed clap_edge package and classifies one image.
#include <clap_edge/classifier.hpp>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  try {
    const auto clf = clap_edge::Classifier::open(argv[1], "openvino");
    const auto preds = clf.predict(std::vector<std::string>{argv[2]}, 1);
    std::cout << preds.at(0).labels.at(0) << "\n";
    return 0;
  } catch (const clap_edge::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
