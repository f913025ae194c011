// Small validators for the trace writers' output, shared by tests: a strict JSON parser (RFC 8259
// grammar, into a tiny DOM) and an XML well-formedness check. Header-only, standard library only,
// so a test can check the writers without Python, jq or an XML library on the machine.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace flashmoe_test {

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------
struct JsonValue {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> items;   // array elements, or object values
  std::vector<std::string> keys;  // object keys, parallel to items

  // The first member named key of an object, else nullptr.
  const JsonValue* get(const std::string& key) const {
    if (type != Type::Object) return nullptr;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
  bool is_string(const std::string& s) const { return type == Type::String && string == s; }
};

namespace detail {

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}

  bool parse(JsonValue* out, std::string* error) {
    JsonValue root;
    bool ok = value(root, 0);
    if (ok) {
      skip_ws();
      if (pos_ != s_.size()) ok = fail("trailing characters after the top-level value");
    }
    if (!ok) {
      if (error) *error = error_ + " at offset " + std::to_string(pos_);
      return false;
    }
    if (out) *out = std::move(root);
    return true;
  }

 private:
  // Deep enough for any trace; stops a hostile input from overflowing the stack.
  static constexpr int kMaxDepth = 200;

  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }
  void skip_ws() {
    while (!at_end() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool literal(const char* word) {
    std::size_t n = 0;
    while (word[n] != '\0') ++n;
    if (s_.compare(pos_, n, word) != 0) return fail("invalid literal");
    pos_ += n;
    return true;
  }

  bool value(JsonValue& v, int depth) {
    if (depth > kMaxDepth) return fail("nesting too deep");
    skip_ws();
    if (at_end()) return fail("unexpected end of input");
    const char c = peek();
    switch (c) {
      case '{':
        return object(v, depth);
      case '[':
        return array(v, depth);
      case '"':
        v.type = JsonValue::Type::String;
        return string(v.string);
      case 't':
        v.type = JsonValue::Type::Bool;
        v.boolean = true;
        return literal("true");
      case 'f':
        v.type = JsonValue::Type::Bool;
        v.boolean = false;
        return literal("false");
      case 'n':
        v.type = JsonValue::Type::Null;
        return literal("null");
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return number(v);
        return fail(std::string("unexpected character '") + c + "'");
    }
  }

  bool object(JsonValue& v, int depth) {
    v.type = JsonValue::Type::Object;
    ++pos_;  // '{'
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return true;
    }
    for (;;) {
      skip_ws();
      if (peek() != '"') return fail("expected a string key");
      std::string key;
      if (!string(key)) return false;
      skip_ws();
      if (peek() != ':') return fail("expected ':'");
      ++pos_;
      JsonValue member;
      if (!value(member, depth + 1)) return false;
      v.keys.push_back(std::move(key));
      v.items.push_back(std::move(member));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return true;
      }
      return fail("expected ',' or '}' in an object");
    }
  }

  bool array(JsonValue& v, int depth) {
    v.type = JsonValue::Type::Array;
    ++pos_;  // '['
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return true;
    }
    for (;;) {
      JsonValue item;
      if (!value(item, depth + 1)) return false;
      v.items.push_back(std::move(item));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return true;
      }
      return fail("expected ',' or ']' in an array");
    }
  }

  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  bool hex4(unsigned* out) {
    if (pos_ + 4 > s_.size()) return fail("truncated \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      const int d = hex_digit(s_[pos_ + i]);
      if (d < 0) return fail("bad hex digit in \\u escape");
      u = u * 16 + static_cast<unsigned>(d);
    }
    pos_ += 4;
    *out = u;
    return true;
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool string(std::string& out) {
    ++pos_;  // opening quote
    for (;;) {
      if (at_end()) return fail("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return fail("raw control character in a string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (at_end()) return fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          unsigned cp = 0;
          if (!hex4(&cp)) return false;
          // A high surrogate followed by a low one is one code point; lone ones pass as is.
          if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
            const std::size_t save = pos_;
            pos_ += 2;
            unsigned lo = 0;
            if (!hex4(&lo)) return false;
            if (lo >= 0xDC00 && lo < 0xE000) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              pos_ = save;
            }
          }
          append_utf8(out, cp);
          break;
        }
        default:
          return fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }

  bool digits() {
    const std::size_t start = pos_;
    while (!at_end() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    return pos_ > start;
  }

  bool number(JsonValue& v) {
    const std::size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (!digits()) {
      return fail("expected digits");
    }
    if (peek() == '.') {
      ++pos_;
      if (!digits()) return fail("expected digits after '.'");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!digits()) return fail("expected exponent digits");
    }
    v.type = JsonValue::Type::Number;
    v.number = std::strtod(s_.substr(start, pos_ - start).c_str(), nullptr);
    return true;
  }

  const std::string& s_;
  std::size_t pos_ = 0;
  std::string error_;
};

}  // namespace detail

// Parses text as one JSON value; on failure says what and where in *error.
inline bool json_parse(const std::string& text, JsonValue* out, std::string* error) {
  return detail::JsonParser(text).parse(out, error);
}

inline bool json_is_valid(const std::string& text, std::string* error) {
  return json_parse(text, nullptr, error);
}

// The "ph":"X" events of a Chrome trace's top-level "traceEvents" array (copies).
inline std::vector<JsonValue> chrome_x_events(const std::string& text) {
  std::vector<JsonValue> out;
  JsonValue root;
  if (!json_parse(text, &root, nullptr)) return out;
  const JsonValue* events = root.get("traceEvents");
  if (!events || events->type != JsonValue::Type::Array) return out;
  for (const JsonValue& e : events->items) {
    const JsonValue* ph = e.get("ph");
    if (ph && ph->is_string("X")) out.push_back(e);
  }
  return out;
}

// Number of "X" events in "traceEvents"; -1 if the text is not JSON or has no such array.
inline int chrome_x_event_count(const std::string& text) {
  JsonValue root;
  if (!json_parse(text, &root, nullptr)) return -1;
  const JsonValue* events = root.get("traceEvents");
  if (!events || events->type != JsonValue::Type::Array) return -1;
  int n = 0;
  for (const JsonValue& e : events->items) {
    const JsonValue* ph = e.get("ph");
    if (ph && ph->is_string("X")) ++n;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------------------------
namespace detail {

// Checks XML 1.0 well-formedness as far as a generated SVG needs: one root element, balanced and
// properly nested tags, quoted and unique attributes, '<' only as markup, '&' only in the five
// predefined entities or character references. Comments, processing instructions, CDATA and a
// DOCTYPE without internal subset are accepted. Names are ASCII or any non-ASCII byte.
class XmlChecker {
 public:
  explicit XmlChecker(const std::string& text) : s_(text) {}

  bool check(std::string* error) {
    const bool ok = document();
    if (!ok && error) *error = error_ + " at offset " + std::to_string(pos_);
    return ok;
  }

 private:
  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  bool at_end() const { return pos_ >= s_.size(); }
  bool starts(const char* p) const {
    return s_.compare(pos_, std::char_traits<char>::length(p), p) == 0;
  }
  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  void skip_ws() {
    while (!at_end() && is_space(s_[pos_])) ++pos_;
  }
  static bool name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           static_cast<unsigned char>(c) >= 0x80;
  }
  static bool name_char(char c) {
    return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
  }
  bool name(std::string& out) {
    if (at_end() || !name_start(s_[pos_])) return fail("expected a name");
    const std::size_t start = pos_;
    while (!at_end() && name_char(s_[pos_])) ++pos_;
    out = s_.substr(start, pos_ - start);
    return true;
  }
  // Skips past the terminator, failing if it never comes.
  bool skip_past(const char* end, const char* what) {
    const std::size_t found = s_.find(end, pos_);
    if (found == std::string::npos) return fail(std::string("unterminated ") + what);
    pos_ = found + std::char_traits<char>::length(end);
    return true;
  }

  // At '&': one entity or character reference.
  bool reference() {
    ++pos_;
    if (!at_end() && s_[pos_] == '#') {
      ++pos_;
      bool hex = false;
      if (!at_end() && s_[pos_] == 'x') {
        hex = true;
        ++pos_;
      }
      const std::size_t start = pos_;
      while (!at_end() && ((s_[pos_] >= '0' && s_[pos_] <= '9') ||
                           (hex && ((s_[pos_] >= 'a' && s_[pos_] <= 'f') ||
                                    (s_[pos_] >= 'A' && s_[pos_] <= 'F'))))) {
        ++pos_;
      }
      if (pos_ == start) return fail("empty character reference");
    } else {
      std::string n;
      if (!name(n)) return fail("bad entity reference");
      if (n != "amp" && n != "lt" && n != "gt" && n != "quot" && n != "apos") {
        return fail("undefined entity &" + n + ";");
      }
    }
    if (at_end() || s_[pos_] != ';') return fail("entity reference without ';'");
    ++pos_;
    return true;
  }

  // Comments, PIs and whitespace, allowed around the root.
  bool misc(bool allow_doctype) {
    for (;;) {
      skip_ws();
      if (starts("<!--")) {
        pos_ += 4;
        if (!skip_past("-->", "comment")) return false;
      } else if (starts("<?")) {
        pos_ += 2;
        if (!skip_past("?>", "processing instruction")) return false;
      } else if (allow_doctype && starts("<!DOCTYPE")) {
        if (s_.find('[', pos_) < s_.find('>', pos_)) return fail("DOCTYPE internal subset");
        if (!skip_past(">", "DOCTYPE")) return false;
      } else {
        return true;
      }
    }
  }

  bool document() {
    if (!misc(true)) return false;
    if (at_end() || s_[pos_] != '<') return fail("expected the root element");
    if (!element()) return false;
    if (!misc(false)) return false;
    if (!at_end()) return fail("content after the root element");
    return true;
  }

  // An element with its content, iteratively (an explicit stack, so depth costs no recursion).
  bool element() {
    if (starts("</") || starts("<!") || starts("<?")) return fail("expected a start tag");
    std::vector<std::string> open;
    do {
      if (starts("</")) {
        pos_ += 2;
        std::string n;
        if (!name(n)) return false;
        skip_ws();
        if (at_end() || s_[pos_] != '>') return fail("expected '>' after end tag");
        ++pos_;
        if (open.empty() || open.back() != n) {
          return fail("end tag </" + n + "> does not match " +
                      (open.empty() ? std::string("anything") : "<" + open.back() + ">"));
        }
        open.pop_back();
      } else if (starts("<!--")) {
        pos_ += 4;
        if (!skip_past("-->", "comment")) return false;
      } else if (starts("<![CDATA[")) {
        pos_ += 9;
        if (!skip_past("]]>", "CDATA section")) return false;
      } else if (starts("<?")) {
        pos_ += 2;
        if (!skip_past("?>", "processing instruction")) return false;
      } else if (starts("<")) {
        ++pos_;
        std::string n;
        bool empty = false;
        if (!start_tag(n, &empty)) return false;
        if (!empty) open.push_back(n);
      } else if (at_end()) {
        return fail("unclosed element <" + open.back() + ">");
      } else if (s_[pos_] == '&') {
        if (!reference()) return false;
      } else if (starts("]]>")) {
        return fail("']]>' in text");
      } else {
        ++pos_;  // character data
      }
    } while (!open.empty());
    return true;
  }

  // After '<': name, attributes, then '>' or '/>'.
  bool start_tag(std::string& n, bool* empty) {
    if (!name(n)) return false;
    std::set<std::string> seen;
    for (;;) {
      const std::size_t before = pos_;
      skip_ws();
      if (at_end()) return fail("unterminated start tag <" + n);
      if (s_[pos_] == '>') {
        ++pos_;
        return true;
      }
      if (starts("/>")) {
        pos_ += 2;
        *empty = true;
        return true;
      }
      if (pos_ == before) return fail("expected whitespace before an attribute");
      std::string attr;
      if (!name(attr)) return false;
      if (!seen.insert(attr).second) return fail("duplicate attribute " + attr);
      skip_ws();
      if (at_end() || s_[pos_] != '=') return fail("attribute " + attr + " without '='");
      ++pos_;
      skip_ws();
      if (at_end() || (s_[pos_] != '"' && s_[pos_] != '\'')) {
        return fail("unquoted value of attribute " + attr);
      }
      const char quote = s_[pos_++];
      for (;;) {
        if (at_end()) return fail("unterminated value of attribute " + attr);
        const char c = s_[pos_];
        if (c == quote) {
          ++pos_;
          break;
        }
        if (c == '<') return fail("'<' in the value of attribute " + attr);
        if (c == '&') {
          if (!reference()) return false;
        } else {
          ++pos_;
        }
      }
    }
  }

  const std::string& s_;
  std::size_t pos_ = 0;
  std::string error_;
};

}  // namespace detail

inline bool xml_is_well_formed(const std::string& text, std::string* error) {
  return detail::XmlChecker(text).check(error);
}

// Occurrences of needle in haystack (non-overlapping).
inline int count_occurrences(const std::string& haystack, const std::string& needle) {
  if (needle.empty()) return 0;
  int n = 0;
  for (std::size_t p = haystack.find(needle); p != std::string::npos;
       p = haystack.find(needle, p + needle.size())) {
    ++n;
  }
  return n;
}

}  // namespace flashmoe_test
