// manifest.json: parsed and checked by the rules of export/bundle/manifest.py (same order, same field paths,
// same limits), names and file names by export/bundle/textrules.py's rules (tables in unicode_tables.hpp).
// Numbers are read without overflow or truncation: an integer that does not fit its range is refused.
#include <cctype>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "clap_edge/bundle.hpp"
#include "clap_edge/errors.hpp"
#include "manifest.hpp"
#include "unicode_tables.hpp"

namespace clap_edge {
using ojson = nlohmann::ordered_json;  // keeps the file's key order: the first error is the one Python reports

namespace {

// export/bundle/manifest.py LIMITS
constexpr size_t kDepth = 32, kClasses = 200000, kNameChars = 1024, kTemplates = 10000, kFiles = 10000;
constexpr int64_t kEmbedDim = 65536, kImageSide = 16384, kMaxBytes = int64_t(1) << 50, kMaxDim = int64_t(1) << 31;

std::string escape_controls(const std::string& s);

struct Checker {
  std::string where;
  [[noreturn]] void bad(const std::string& path, const std::string& problem) const {
    throw BundleError(where + ": manifest field " + (path.empty() ? "" : escape_controls(path) + ": ") + problem);
  }
};

std::vector<uint32_t> code_points(const std::string& s);

// One code point as Python's repr() writes it inside quotes (quotes and backslashes escaped only if asked).
void append_repr(std::string& out, uint32_t cp, bool escape_quotes) {
  char buf[16];
  if (escape_quotes && (cp == '\\' || cp == '\'')) {
    out += '\\';
    out += char(cp);
  } else if (cp == '\n') out += "\\n";
  else if (cp == '\r') out += "\\r";
  else if (cp == '\t') out += "\\t";
  else if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) {
    std::snprintf(buf, sizeof buf, "\\x%02x", cp);
    out += buf;
  } else if (cp == 0x2028 || cp == 0x2029 || (cp >= 0xD800 && cp <= 0xDFFF)) {
    std::snprintf(buf, sizeof buf, "\\u%04x", cp);
    out += buf;
  } else if (cp < 0x80) {
    out += char(cp);
  } else {  // re-encode as UTF-8
    if (cp < 0x800) out += {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
    else if (cp < 0x10000) out += {char(0xE0 | (cp >> 12)), char(0x80 | ((cp >> 6) & 0x3F)), char(0x80 | (cp & 0x3F))};
    else out += {char(0xF0 | (cp >> 18)), char(0x80 | ((cp >> 12) & 0x3F)), char(0x80 | ((cp >> 6) & 0x3F)),
                 char(0x80 | (cp & 0x3F))};
  }
}

// Python's repr() of a str, for messages: one line whatever the name holds.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (uint32_t cp : code_points(s)) append_repr(out, cp, true);
  return out + "'";
}

// A field path holds the manifest's own keys: their control characters are escaped as repr() escapes them, so that a
// key with a newline cannot make the error two lines (textrules.escape_controls is the Python twin).
std::string escape_controls(const std::string& s) {
  std::string out;
  for (uint32_t cp : code_points(s)) append_repr(out, cp, false);
  return out;
}

std::string kind(const ojson& v) {
  if (v.is_null()) return "null";
  if (v.is_string() && code_points(v.get_ref<const std::string&>()).size() <= 40) return quote(v.get<std::string>());
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";  // Python's repr
  if (v.is_primitive()) return v.dump();
  return v.is_array() ? "list" : "dict";
}

// ---- text rules (textrules.py) ------------------------------------------------------------------

int lookup(const unicode::Range* table, size_t n, uint32_t cp) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (table[mid].hi < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && table[lo].lo <= cp && cp <= table[lo].hi ? table[lo].value : 0;
}

// Code points of a UTF-8 string (nlohmann has already refused invalid UTF-8 and lone surrogates).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

std::string hex(uint32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", cp);
  return buf;
}

std::string bad_char(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return "a control character " + hex(cp);
  if (cp == 0x2028 || cp == 0x2029) return hex(cp) + " (a line/paragraph separator)";
  if (cp >= 0xD800 && cp <= 0xDFFF) return "a lone surrogate " + hex(cp) + " (not valid Unicode)";
  return "";
}

std::string name_problem(const std::string& s) {
  if (s.empty()) return "is empty";
  const auto cps = code_points(s);
  if (cps.size() > kNameChars)
    return "has " + std::to_string(cps.size()) + " characters, more than " + std::to_string(kNameChars);
  int last = 0;
  for (uint32_t cp : cps) {
    const std::string b = bad_char(cp);
    if (!b.empty()) return "contains " + b;
    const int c = lookup(unicode::kCombiningClass, std::size(unicode::kCombiningClass), cp);
    if ((c && last > c) || lookup(unicode::kNfcQcNoMaybe, std::size(unicode::kNfcQcNoMaybe), cp))
      return "is not in Unicode NFC form (quick check: " + hex(cp) + " at this place); write it precomposed (NFC)";
    last = c;
  }
  return "";
}

std::string file_name_problem(const std::string& name) {
  const auto cps = code_points(name);
  if (cps.empty() || cps.size() > 255) return "must have 1..255 characters";
  if (name[0] == '/') return "is absolute";
  if (name.find('\\') != std::string::npos) return "contains a backslash";
  for (uint32_t cp : cps)
    if (!bad_char(cp).empty()) return "contains " + bad_char(cp);
  size_t i = 0;
  while (i <= name.size()) {
    const size_t j = std::min(name.find('/', i), name.size());
    const std::string part = name.substr(i, j - i);
    if (part.empty() || part == "." || part == "..") return "has an empty, '.' or '..' part";
    i = j + 1;
  }
  return "";
}

// ---- typed readers (manifest.py's small checkers) ---------------------------------------------------

const ojson& obj(const Checker& ck, const ojson& v, const std::string& path) {
  if (!v.is_object()) ck.bad(path, "must be an object, got " + kind(v));
  return v;
}

const ojson& list(const Checker& ck, const ojson& v, const std::string& path, size_t lo, size_t hi) {
  if (!v.is_array()) ck.bad(path, "must be a list, got " + kind(v));
  if (v.size() < lo || v.size() > hi)
    ck.bad(path, lo == hi ? "must have " + std::to_string(lo) + " items, has " + std::to_string(v.size())
                          : "must have " + std::to_string(lo) + ".." + std::to_string(hi) + " items, has " +
                                std::to_string(v.size()));
  return v;
}

std::string str(const Checker& ck, const ojson& v, const std::string& path) {
  if (!v.is_string())
    ck.bad(path, "must be a non-empty string of at most " + std::to_string(kNameChars) + " characters, got " + kind(v));
  const std::string s = v.get<std::string>(), problem = name_problem(s);
  if (!problem.empty()) ck.bad(path, problem);
  return s;
}

// An integer in [lo, hi]: a JSON integer, or a float with an integral value (64.0), as Python's _int. Values
// that do not fit int64 are refused, never wrapped or truncated.
int64_t integer(const Checker& ck, const ojson& v, const std::string& path, int64_t lo, int64_t hi) {
  bool ok = false;
  int64_t out = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= uint64_t(hi) && hi >= 0;
    out = ok ? int64_t(u) : 0;
  } else if (v.is_number_integer()) {
    out = v.get<int64_t>();
    ok = true;
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    ok = std::isfinite(d) && d == std::floor(d) && d >= double(lo) && d <= double(hi);
    out = ok ? int64_t(d) : 0;
  }
  if (!ok || out < lo || out > hi)
    ck.bad(path, "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + kind(v));
  return out;
}

double number(const Checker& ck, const ojson& v, const std::string& path, bool positive = false, bool nonneg = false) {
  if (!v.is_number() || !std::isfinite(v.get<double>())) ck.bad(path, "must be a finite number, got " + kind(v));
  const double d = v.get<double>();
  if (positive && !(d > 0)) ck.bad(path, "must be > 0, got " + kind(v));
  if (nonneg && !(d >= 0)) ck.bad(path, "must be >= 0, got " + kind(v));
  return d;
}

std::string one_of(const Checker& ck, const ojson& v, const std::string& path, const std::set<std::string>& allowed) {
  if (!v.is_string() || !allowed.count(v.get<std::string>())) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    ck.bad(path, "must be one of [" + list + "], got " + kind(v));
  }
  return v.get<std::string>();
}

void check_file_name(const Checker& ck, const std::string& name, const std::string& path) {
  const std::string problem = file_name_problem(name);
  if (!problem.empty())
    ck.bad(path, "names a path outside the bundle or not a plain one (" + problem +
                     "); a file name is a relative POSIX path without empty, '.' or '..' parts, backslashes or "
                     "control characters");
}

const ojson* get(const ojson& o, const char* key) {  // nullptr for absent or null (Python's _opt)
  const auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

// ---- sections ----------------------------------------------------------------------------------

void json_values(const Checker& ck, const ojson& v, const std::string& path, size_t depth) {
  if (depth > kDepth) ck.bad(path, "nested more than " + std::to_string(kDepth) + " levels deep");
  if (v.is_object())
    for (const auto& [k, x] : v.items()) json_values(ck, x, path.empty() ? k : path + "." + k, depth + 1);
  else if (v.is_array())
    for (size_t i = 0; i < v.size(); ++i) json_values(ck, v[i], path + "[" + std::to_string(i) + "]", depth + 1);
  else if (v.is_number_float() && !std::isfinite(v.get<double>()))
    ck.bad(path, v.dump() + " is not a finite number");
}

PreprocessConfig preprocess(const Checker& ck, const ojson& v) {
  const ojson& o = obj(ck, v, "preprocess");
  const std::set<std::string> fields{"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"};
  for (const auto& [k, x] : o.items())
    if (!fields.count(k)) ck.bad("preprocess." + k, "is not a preprocess field");
  for (const auto& f : fields)
    if (!o.contains(f)) ck.bad("preprocess." + f, "is missing");
  PreprocessConfig cfg;
  const ojson& size = list(ck, o["size"], "preprocess.size", 2, 2);
  cfg.height = int(integer(ck, size[0], "preprocess.size[0]", 1, kImageSide));
  cfg.width = int(integer(ck, size[1], "preprocess.size[1]", 1, kImageSide));
  const ojson& mean = list(ck, o["mean"], "preprocess.mean", 3, 3);
  const ojson& std_ = list(ck, o["std"], "preprocess.std", 3, 3);
  for (size_t i = 0; i < 3; ++i) {
    cfg.mean[i] = float(number(ck, mean[i], "preprocess.mean[" + std::to_string(i) + "]"));
    cfg.std[i] = float(number(ck, std_[i], "preprocess.std[" + std::to_string(i) + "]", true));
  }
  if (o["mode"] != "RGB") ck.bad("preprocess.mode", "must be 'RGB', got " + kind(o["mode"]));
  cfg.interpolation = one_of(ck, o["interpolation"], "preprocess.interpolation", {"bicubic", "bilinear", "nearest", "random"});
  cfg.resize_mode = one_of(ck, o["resize_mode"], "preprocess.resize_mode", {"shortest", "longest", "squash"});
  cfg.fill_color = int(integer(ck, o["fill_color"], "preprocess.fill_color", 0, 255));
  return cfg;
}

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;  // -1: a symbolic dim
  std::string repr;            // the shape as Python prints the list: ['N', 3, 64, 64]
};

std::vector<Tensor> tensors(const Checker& ck, const ojson& v, const std::string& path) {
  std::vector<Tensor> out;
  const ojson& l = list(ck, v, path, 1, 16);
  for (size_t i = 0; i < l.size(); ++i) {
    const std::string p = path + "[" + std::to_string(i) + "]";
    const ojson& o = obj(ck, l[i], p);
    bool extra = false;
    for (const auto& [k, x] : o.items()) extra |= k != "name" && k != "shape" && k != "dtype";
    if (extra || !o.contains("name") || !o.contains("shape")) ck.bad(p, "must be {name, shape, dtype}");
    const ojson& shape = list(ck, o["shape"], p + ".shape", 1, 8);
    Tensor t;
    t.repr = "";
    for (size_t j = 0; j < shape.size(); ++j) {
      const ojson& d = shape[j];
      if (d.is_string() && !d.get<std::string>().empty() && code_points(d.get<std::string>()).size() <= 64) {
        t.shape.push_back(-1);
        t.repr += (j ? ", " : "[") + quote(d.get<std::string>());
      } else {
        t.shape.push_back(integer(ck, d, p + ".shape[" + std::to_string(j) + "]", 1, kMaxDim));
        t.repr += (j ? ", " : "[") + std::to_string(t.shape.back());
      }
    }
    t.repr += "]";
    t.name = str(ck, o["name"], p + ".name");
    const ojson float32 = "float32";
    one_of(ck, o.contains("dtype") ? o["dtype"] : float32, p + ".dtype",
           {"float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64"});
    out.push_back(t);
  }
  return out;
}

void model(const Checker& ck, const ojson& v, Manifest& m) {
  const ojson& o = obj(ck, v, "model");
  if (!o.contains("model_name")) ck.bad("model.model_name", "is missing");
  if (const ojson* h = get(o, "head")) {
    obj(ck, *h, "model.head");
    for (const char* key : {"alpha", "latent_dim", "activation"})
      if (!h->contains(key)) ck.bad(std::string("model.head.") + key, "is missing");
    number(ck, (*h)["alpha"], "model.head.alpha");
    integer(ck, (*h)["latent_dim"], "model.head.latent_dim", 1, kEmbedDim);
    str(ck, (*h)["activation"], "model.head.activation");
  }
  m.model_name = str(ck, o["model_name"], "model.model_name");
  if (const ojson* p = get(o, "pretrained")) str(ck, *p, "model.pretrained");
}

void engines(const Checker& ck, const ojson& v, Manifest& m) {
  const ojson& l = list(ck, v, "engines", 0, 256);
  for (size_t i = 0; i < l.size(); ++i) {
    const std::string p = "engines[" + std::to_string(i) + "]";
    const ojson& o = obj(ck, l[i], p);
    for (const char* key : {"file", "engine", "precision"})
      if (!o.contains(key)) ck.bad(p + "." + key, "is missing");
    EngineEntry e;
    e.file = str(ck, o["file"], p + ".file");
    e.name = str(ck, o["engine"], p + ".engine");
    str(ck, o["precision"], p + ".precision");
    if (const ojson* s = get(o, "sidecar")) e.sidecar = str(ck, *s, p + ".sidecar");
    if (o.contains("name") && o["name"].is_string()) e.name = o["name"].get<std::string>();
    for (const auto& [key, name] : {std::pair<const char*, std::string>{"file", e.file}, {"sidecar", e.sidecar}}) {
      if (name.empty()) continue;
      check_file_name(ck, name, p + "." + key);
      if (!m.files.count(name)) ck.bad(p + "." + key, "names " + quote(name) + ", which files does not list");
    }
    m.engines.push_back(e);
  }
}

// classes {bias, provenance} (schema 4), as manifest.py's _classes.
void classes(const Checker& ck, const ojson& v, Manifest& m) {
  const ojson& o = obj(ck, v, "classes");
  for (const auto& [k, x] : o.items())
    if (k != "bias" && k != "provenance") ck.bad("classes." + k, "is not a classes field (bias, provenance)");
  if (o.contains("bias")) {
    if (!o["bias"].is_boolean()) ck.bad("classes.bias", "must be true or false, got " + kind(o["bias"]));
    m.class_bias = o["bias"].get<bool>();
  }
  if (o.contains("provenance")) obj(ck, o["provenance"], "classes.provenance");
}

// text {file, context_length, tokenizer} (the optional text encoder), as manifest.py's _text.
void text(const Checker& ck, const ojson& v, const Manifest& m) {
  const ojson& o = obj(ck, v, "text");
  for (const char* key : {"file", "context_length", "tokenizer"})
    if (!o.contains(key)) ck.bad(std::string("text.") + key, "is missing");
  const std::string f = str(ck, o["file"], "text.file");
  check_file_name(ck, f, "text.file");
  if (!m.files.count(f)) ck.bad("text.file", "names " + quote(f) + ", which files does not list");
  const ojson& tok = obj(ck, o["tokenizer"], "text.tokenizer");
  const ojson none = ojson::object();
  for (const auto& [role, file] : obj(ck, tok.contains("files") ? tok["files"] : none, "text.tokenizer.files").items()) {
    const std::string p = "text.tokenizer.files." + role;
    const std::string name = str(ck, file, p);
    check_file_name(ck, name, p);
    if (!m.files.count(name)) ck.bad(p, "names " + quote(name) + ", which files does not list");
  }
  integer(ck, o["context_length"], "text.context_length", 1, 65536);
}

void check_shapes(const Checker& ck, Manifest& m, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs) {
  const Tensor& image = inputs[0];
  if (image.name != "image") ck.bad("inputs[0].name", "must be 'image', got " + quote(image.name));
  const std::vector<int64_t> want{3, m.preprocess.height, m.preprocess.width};
  if (image.shape.size() != 4 || std::vector<int64_t>(image.shape.begin() + 1, image.shape.end()) != want)
    ck.bad("inputs[0].shape", image.repr + " does not match [N, 3, " + std::to_string(want[1]) + ", " +
                                  std::to_string(want[2]) + "] (preprocess.size [" + std::to_string(want[1]) + ", " +
                                  std::to_string(want[2]) + "])");
  m.input_name = image.name;
  m.input_height = m.preprocess.height;
  m.input_width = m.preprocess.width;
  for (size_t i = 0; i < outputs.size(); ++i)  // schema 4: the model ends at the embedding; logits are the runtime's
    if (outputs[i].name == "logits")
      ck.bad("outputs[" + std::to_string(i) + "].name",
             "'logits' is not a model output in schema_version 4 (the model ends at the embedding; the runtime "
             "applies classes.safetensors); re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)");
  const std::pair<const char*, int64_t> widths[] = {{"embedding", m.embed_dim}};
  for (const auto& [name, width] : widths) {
    size_t i = 0;
    while (i < outputs.size() && outputs[i].name != name) ++i;
    if (i == outputs.size()) ck.bad("outputs", std::string("lists no '") + name + "' output");
    const std::string p = "outputs[" + std::to_string(i) + "].shape";
    if (outputs[i].shape.size() != 2) ck.bad(p, std::string("'") + name + "' must be 2-D [N, width], got " + outputs[i].repr);
    if (outputs[i].shape[1] != -1 && outputs[i].shape[1] != width)
      ck.bad(p, std::string("'") + name + "' has width " + std::to_string(outputs[i].shape[1]) + " but the bundle has " +
                    std::to_string(width) + (name[0] == 'l' ? " classes" : " embedding dims"));
  }
}

}  // namespace

ojson parse_manifest_json(const std::string& text, const std::string& where) {
  const Checker ck{where};
  // Bound the nesting before the (recursive) parser sees it; the exact depth rule is json_values'.
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if ((c == '[' || c == '{') && ++depth > kDepth + 1) {
      ck.bad("", "nested more than " + std::to_string(kDepth) + " levels deep");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  if (text.find('\0') != std::string::npos) throw BundleError(where + ": manifest: not valid JSON (a NUL byte)");
  // An integer of more than 40 digits: the same one line as Python's loads (bounded_int), before the parser overflows.
  in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') { in_string = true; continue; }
    if (!(c == '-' || (c >= '0' && c <= '9')) || (i > 0 && (std::isalnum(static_cast<unsigned char>(text[i - 1])) ||
                                                             text[i - 1] == '.' || text[i - 1] == '+' || text[i - 1] == '-')))
      continue;
    size_t j = i + (c == '-');
    while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
    const size_t digits = j - i - (c == '-');
    const bool integer = j >= text.size() || (text[j] != '.' && text[j] != 'e' && text[j] != 'E');
    if (integer && digits > 40) {
      std::string n = std::to_string(digits);
      for (int k = int(n.size()) - 3; k > 0; k -= 3) n.insert(size_t(k), ",");
      throw BundleError(where + ": manifest: an integer of " + n + " digits (" + text.substr(i, 12) +
                        "...); no manifest number needs more than 40");
    }
    i = j - 1 < i ? i : j - 1;
  }
  ojson j;
  // a key given twice means one thing to a reader keeping the last and another to one keeping the first (as Python)
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  const ojson::parser_callback_t unique_keys = [&](int, ojson::parse_event_t ev, ojson& parsed) {
    if (ev == ojson::parse_event_t::object_start) keys.emplace_back();
    else if (ev == ojson::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    else if (ev == ojson::parse_event_t::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
             duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    j = ojson::parse(text, unique_keys);
  } catch (const ojson::out_of_range& e) {  // 406: a number too large for a double (1e400, 5000 digits)
    throw BundleError(where + ": manifest: not valid JSON (a number is not finite: " + std::string(e.what()) + ")");
  } catch (const ojson::exception& e) {
    throw BundleError(where + ": manifest: not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!duplicate.empty())
    throw BundleError(where + ": manifest: not valid JSON (duplicate key " + ojson(duplicate).dump() + ")");
  json_values(ck, j, "", 0);
  obj(ck, j, "");
  const ojson v = j.contains("schema_version") ? j["schema_version"] : ojson();
  const bool is_int = v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()));
  if (!is_int || v.get<double>() < 1) ck.bad("schema_version", "must be an integer >= 1, got " + kind(v));
  if (v.get<double>() > kMaxSchemaVersion)
    ck.bad("schema_version", v.dump() + " is newer than this runtime reads (<= " + std::to_string(kMaxSchemaVersion) +
                                 "); upgrade clap-edge");
  if (v.get<double>() < kMinSchemaVersion)
    ck.bad("schema_version", v.dump() + " is older than this clap-edge reads (>= " + std::to_string(kMinSchemaVersion) +
                                 "); re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)");
  return j;
}

Manifest validate_manifest(const ojson& j, const std::string& where) {
  const Checker ck{where};
  Manifest m;
  m.schema_version = int(j["schema_version"].get<double>());
  for (const char* key : {"model", "class_names", "embed_dim", "logit_scale", "preprocess", "inputs", "outputs", "files"})
    if (!j.contains(key)) ck.bad(key, "is missing");
  for (const auto& [name, e] : obj(ck, j["files"], "files").items()) {
    const std::string p = "files[" + quote(name) + "]";
    check_file_name(ck, name, p);
    if (name == "manifest.json" || name == "manifest.sha256" || name == "bundle.sig")
      ck.bad(p, name + " is managed by the bundle itself and must not be listed");
    const ojson& o = obj(ck, e, p);
    if (o.size() != 2 || !o.contains("sha256") || !o.contains("bytes")) ck.bad(p, "must be exactly {sha256, bytes}");
    const ojson& sha = o["sha256"];
    bool hex = sha.is_string() && sha.get_ref<const std::string&>().size() == 64;
    if (hex)
      for (char c : sha.get_ref<const std::string&>()) hex &= (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    if (!hex) ck.bad(p + ".sha256", "must be 64 lower-case hex digits");
    m.files[name] = FileEntry{sha.get<std::string>(), integer(ck, o["bytes"], p + ".bytes", 0, kMaxBytes)};
  }
  if (m.files.size() > kFiles) ck.bad("files", "lists " + std::to_string(m.files.size()) + " files, more than 10000");
  if (!m.files.count("classes.safetensors")) ck.bad("files", "does not list classes.safetensors");
  const ojson& names = list(ck, j["class_names"], "class_names", 1, kClasses);
  std::set<std::string> seen;
  for (size_t i = 0; i < names.size(); ++i) {
    m.class_names.push_back(str(ck, names[i], "class_names[" + std::to_string(i) + "]"));
    if (!seen.insert(m.class_names.back()).second) ck.bad("class_names", quote(m.class_names.back()) + " appears twice");
  }
  m.embed_dim = int(integer(ck, j["embed_dim"], "embed_dim", 1, kEmbedDim));
  m.preprocess = preprocess(ck, j["preprocess"]);
  if (const ojson* v = get(j, "clap_edge_version")) str(ck, *v, "clap_edge_version");
  model(ck, j["model"], m);
  const auto inputs = tensors(ck, j["inputs"], "inputs");
  const auto outputs = tensors(ck, j["outputs"], "outputs");
  const ojson none_list = ojson::array(), none_obj = ojson::object(), zero = 0.0;
  number(ck, j.contains("alpha") ? j["alpha"] : zero, "alpha");
  m.logit_scale = number(ck, j["logit_scale"], "logit_scale", true);
  const ojson& templates = list(ck, j.contains("templates") ? j["templates"] : none_list, "templates", 0, kTemplates);
  for (size_t i = 0; i < templates.size(); ++i) str(ck, templates[i], "templates[" + std::to_string(i) + "]");
  if (const ojson* v = get(j, "opset")) integer(ck, *v, "opset", 1, 1000);
  if (const ojson* v = get(j, "flops_per_image")) number(ck, *v, "flops_per_image", false, true);
  for (const auto& [name, file] : obj(ck, j.contains("variants") ? j["variants"] : none_obj, "variants").items()) {
    const std::string f = str(ck, file, "variants." + name);
    check_file_name(ck, f, "variants." + name);
    // the same suffixes as VARIANT_FILES in names.py: a runtime picks its reader by the variant, not by sniffing
    static const std::map<std::string, std::string> kVariantSuffix = {
        {"fp32", ".onnx"}, {"int8", ".onnx"}, {"qdq", ".onnx"}, {"fp16", ".onnx"}, {"openvino-int8", ".xml"},
        {"torch", ".pt2"},
        // phone/board variants: checked for their suffix, never run here (this runtime reads ONNX/OpenVINO)
        {"executorch-fp32", ".pte"}, {"executorch-int8", ".pte"}, {"litert-fp32", ".tflite"},
        {"litert-int8", ".tflite"}};
    if (auto it = kVariantSuffix.find(name); it != kVariantSuffix.end()) {
      const std::string& sfx = it->second;
      if (f.size() < sfx.size() || f.compare(f.size() - sfx.size(), sfx.size(), sfx) != 0)
        ck.bad("variants." + name, "names " + quote(f) + ", but a " + name + " variant is a " + sfx + " file");
    }
    if (!m.files.count(f)) ck.bad("variants." + name, "names " + quote(f) + ", which files does not list");
    m.variants[name] = f;
  }
  for (const char* section : {"parity", "drift"}) {
    const ojson* v = get(j, section);
    if (!v && std::string(section) == "parity" && j.contains("parity")) ck.bad("parity", "must be an object, got null");
    if (v)
      for (const auto& [k, x] : obj(ck, *v, section).items()) obj(ck, x, std::string(section) + "." + k);
  }
  if (const ojson* v = get(j, "engines")) engines(ck, *v, m);
  if (const ojson* v = get(j, "classes")) classes(ck, *v, m);
  if (const ojson* v = get(j, "text")) text(ck, *v, m);
  check_shapes(ck, m, inputs, outputs);
  return m;
}

Manifest parse_manifest(const std::string& text, const std::string& where) {
  return validate_manifest(parse_manifest_json(text, where), where);
}

}  // namespace clap_edge
