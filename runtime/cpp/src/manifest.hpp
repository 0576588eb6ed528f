// manifest.json in two steps, as the Python reader: the JSON and its schema_version (before the digest is
// checked: a newer layout may keep its digest elsewhere), then every field (manifest.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "clap_edge/bundle.hpp"

namespace clap_edge {
nlohmann::ordered_json parse_manifest_json(const std::string& text, const std::string& where);
Manifest validate_manifest(const nlohmann::ordered_json& j, const std::string& where);
}  // namespace clap_edge
