#include "vmm/gdb_register_layout.h"

#include <algorithm>
#include <charconv>
#include <map>

namespace hv::vmm {
namespace {

constexpr int kMaxIncludeDepth = 8;
constexpr int kMaxFiles = 32;
constexpr std::size_t kMaxRegisters = 4096;

// The value of attribute `name` inside one tag's text, if present.
std::optional<std::string> Attribute(std::string_view tag, std::string_view name) {
  std::size_t pos = 0;
  while ((pos = tag.find(name, pos)) != std::string_view::npos) {
    const bool starts = pos > 0 && (tag[pos - 1] == ' ' || tag[pos - 1] == '\t' ||
                                    tag[pos - 1] == '\n' || tag[pos - 1] == '\r');
    std::size_t i = pos + name.size();
    while (i < tag.size() && tag[i] == ' ') ++i;
    if (starts && i < tag.size() && tag[i] == '=') {
      ++i;
      while (i < tag.size() && tag[i] == ' ') ++i;
      if (i < tag.size() && (tag[i] == '"' || tag[i] == '\'')) {
        const char q = tag[i];
        const std::size_t end = tag.find(q, i + 1);
        if (end == std::string_view::npos) return std::nullopt;
        return std::string(tag.substr(i + 1, end - i - 1));
      }
    }
    pos += name.size();
  }
  return std::nullopt;
}

std::optional<int> ParseInt(const std::string& s) {
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

struct ParseState {
  const GdbRegisterLayout::AnnexReader* read;
  int files = 0;
  int next_regnum = 0;
  std::vector<GdbRegister> regs;
};

Status ParseDocument(std::string_view xml, int depth, ParseState& st) {
  std::size_t i = 0;
  while ((i = xml.find('<', i)) != std::string_view::npos) {
    if (xml.substr(i, 4) == "<!--") {
      const std::size_t end = xml.find("-->", i + 4);
      if (end == std::string_view::npos) return InvalidArgument("unterminated XML comment");
      i = end + 3;
      continue;
    }
    const std::size_t end = xml.find('>', i);
    if (end == std::string_view::npos) return InvalidArgument("unterminated XML tag");
    const std::string_view tag = xml.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.substr(0, 4) == "reg " || tag.substr(0, 4) == "reg\t" || tag.substr(0, 4) == "reg\n") {
      const auto name = Attribute(tag, "name");
      const auto bitsize = Attribute(tag, "bitsize");
      if (!name || name->empty()) return InvalidArgument("<reg> without a name");
      const auto bits = bitsize ? ParseInt(*bitsize) : std::nullopt;
      if (!bits || *bits <= 0 || *bits % 8 != 0 || *bits > 4096) {
        return InvalidArgument("register '" + *name + "' has bad bitsize '" +
                               bitsize.value_or("") + "'");
      }
      if (const auto regnum = Attribute(tag, "regnum")) {
        const auto n = ParseInt(*regnum);
        if (!n || *n < 0 || *n > 100000) {
          return InvalidArgument("register '" + *name + "' has bad regnum '" + *regnum + "'");
        }
        st.next_regnum = *n;
      }
      if (st.regs.size() >= kMaxRegisters) return InvalidArgument("too many registers");
      st.regs.push_back(GdbRegister{*name, st.next_regnum++, *bits, 0});
    } else if (tag.substr(0, 11) == "xi:include ") {
      const auto href = Attribute(tag, "href");
      if (!href || href->empty()) return InvalidArgument("<xi:include> without href");
      if (depth >= kMaxIncludeDepth) return InvalidArgument("includes nested too deeply at '" + *href + "'");
      if (++st.files > kMaxFiles) return InvalidArgument("more than 32 included files");
      Result<std::string> sub = (*st.read)(*href);
      if (!sub.ok()) return sub.status().WithContext("reading '" + *href + "'");
      Status s = ParseDocument(*sub, depth + 1, st);
      if (!s.ok()) return s.WithContext("in '" + *href + "'");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<GdbRegisterLayout> GdbRegisterLayout::Parse(std::string_view xml, const AnnexReader& read) {
  ParseState st;
  st.read = &read;
  Status s = ParseDocument(xml, 0, st);
  if (!s.ok()) return s.WithContext("parsing the gdb target description");
  std::stable_sort(st.regs.begin(), st.regs.end(),
                   [](const GdbRegister& a, const GdbRegister& b) { return a.regnum < b.regnum; });
  std::size_t offset = 0;
  for (std::size_t k = 0; k < st.regs.size(); ++k) {
    if (k > 0 && st.regs[k].regnum == st.regs[k - 1].regnum) {
      return InvalidArgument("parsing the gdb target description: registers '" +
                             st.regs[k - 1].name + "' and '" + st.regs[k].name +
                             "' share number " + std::to_string(st.regs[k].regnum));
    }
    st.regs[k].offset = offset;
    offset += static_cast<std::size_t>(st.regs[k].bitsize / 8);
  }
  GdbRegisterLayout layout;
  layout.registers_ = std::move(st.regs);
  return layout;
}

const GdbRegister* GdbRegisterLayout::Find(std::string_view name) const {
  for (const GdbRegister& r : registers_) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

Result<std::uint64_t> GdbRegisterLayout::Read(std::span<const std::uint8_t> g_reply,
                                              std::string_view name) const {
  const GdbRegister* r = Find(name);
  if (r == nullptr) return NotFound("register '" + std::string(name) + "' is not in the target description");
  const std::size_t bytes = static_cast<std::size_t>(r->bitsize / 8);
  if (bytes > 8) return InvalidArgument("register '" + std::string(name) + "' is wider than 64 bits");
  if (r->offset + bytes > g_reply.size()) {
    return InvalidArgument("register '" + std::string(name) + "' at offset " +
                           std::to_string(r->offset) + " is beyond the " +
                           std::to_string(g_reply.size()) + "-byte g reply");
  }
  std::uint64_t v = 0;
  for (std::size_t b = 0; b < bytes; ++b) v |= std::uint64_t{g_reply[r->offset + b]} << (8 * b);
  return v;
}

}  // namespace hv::vmm
