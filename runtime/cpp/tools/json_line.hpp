// JSON lines byte-for-byte as Python's json.dumps writes them (", " and ": " separators, ensure_ascii,
// shortest round-trip floats), so the native tool's output diffs cleanly against `clap-edge classify --json`,
// and text-mode fields escaped as `clap-edge classify` escapes them (apps/cli/classify.py escape_text).
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace clap_edge::tools {

// The next code point of UTF-8 text at s[i], advancing i; a byte that does not start a valid sequence is
// returned as 0xDC00 + byte (Python's surrogateescape, which is how it decodes such file names).
inline uint32_t next_code_point(const std::string& s, size_t& i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t len = 0;
  uint32_t cp = 0, min = 0;
  if (c < 0x80) { ++i; return c; }
  if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
  bool ok = len > 0 && i + len <= s.size();
  for (size_t k = 1; ok && k < len; ++k) {
    ok = (byte(i + k) & 0xC0) == 0x80;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  ok = ok && cp >= min && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
  if (!ok) { ++i; return 0xDC00 + c; }
  i += len;
  return cp;
}

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) { out += char(cp); return; }
  if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); }
  else if (cp < 0x10000) { out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); }
  else { out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F)); out += char(0x80 | ((cp >> 6) & 0x3F)); }
  out += char(0x80 | (cp & 0x3F));
}

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  char buf[16];
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = next_code_point(s, i);
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (cp < 0x20 || (cp >= 0x7F && cp < 0x10000)) {
          std::snprintf(buf, sizeof buf, "\\u%04x", cp);
          out += buf;
        } else if (cp >= 0x10000) {
          cp -= 0x10000;
          std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
          out += buf;
        } else {
          out += char(cp);
        }
    }
  }
  return out + "\"";
}

// A path, label or message for a text-mode line: backslash, control characters (C0, DEL, C1), line and
// paragraph separators and bytes that are not UTF-8 escaped, so no name can forge a line or a column.
inline std::string escape_text(const std::string& s) {
  std::string out;
  char buf[16];
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = next_code_point(s, i);
    if (cp == '\\') out += "\\\\";
    else if (cp == '\n') out += "\\n";
    else if (cp == '\r') out += "\\r";
    else if (cp == '\t') out += "\\t";
    else if (cp < 0x20 || (cp >= 0x7F && cp < 0xA0)) { std::snprintf(buf, sizeof buf, "\\x%02x", cp); out += buf; }
    else if (cp >= 0xDC80 && cp <= 0xDCFF) { std::snprintf(buf, sizeof buf, "\\x%02x", cp - 0xDC00); out += buf; }
    else if (cp == 0x2028 || cp == 0x2029) { std::snprintf(buf, sizeof buf, "\\u%04x", cp); out += buf; }
    else append_utf8(out, cp);
  }
  return out;
}

inline std::string json_number(double v) { return nlohmann::json(v).dump(); }

inline std::string json_string_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json_string(items[i]);
  return out + "]";
}

inline std::string json_number_list(const std::vector<float>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json_number(double(items[i]));
  return out + "]";
}

}  // namespace clap_edge::tools
