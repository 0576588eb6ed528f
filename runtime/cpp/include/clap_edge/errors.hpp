// Errors of the clap-edge native runtime: one line naming the file and the problem, as the Python runtime.
#pragma once

#include <stdexcept>
#include <string>

namespace clap_edge {

// Base of every error the runtime raises on bad input (not on programming errors).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bundle that cannot be used: missing or malformed manifest, a file whose sha256 does not match, ...
class BundleError : public Error {
 public:
  using Error::Error;
};

// An image file that cannot be decoded (missing, empty, truncated, not an image, too large).
class ImageError : public Error {
 public:
  using Error::Error;
};

}  // namespace clap_edge
