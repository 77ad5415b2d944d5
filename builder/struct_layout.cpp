#include "builder/struct_layout.h"

#include <sstream>

namespace hv::builder {

namespace {

std::string SizeOf(const std::string& block) {
  const auto at = block.find("/* size: ");
  if (at == std::string::npos) return "?";
  const auto end = block.find(',', at);
  return block.substr(at + 9, end == std::string::npos ? std::string::npos : end - at - 9);
}

}  // namespace

std::map<std::string, std::string> ParseStructLayouts(std::string_view text) {
  std::map<std::string, std::string> out;
  std::istringstream in{std::string(text)};
  std::string name;
  std::string block;
  for (std::string line; std::getline(in, line);) {
    if (name.empty()) {
      for (std::string_view kind : {"struct ", "union "}) {
        if (line.rfind(kind, 0) == 0 && line.size() > kind.size() + 2 && line.substr(line.size() - 2) == " {") {
          name = line.substr(0, line.size() - 2);
          block = line + "\n";
        }
      }
      continue;
    }
    block += line + "\n";
    // "};" or "} __attribute__((__aligned__(64)));": a closing brace at column 0 ends the block.
    if (!line.empty() && line[0] == '}') {
      // A name seen twice (one DWARF type per compilation unit, normally once): keep the first.
      out.emplace(name, block);
      name.clear();
    }
  }
  return out;
}

Status CheckStructLayouts(std::string_view before, std::string_view after) {
  const auto a = ParseStructLayouts(before);
  const auto b = ParseStructLayouts(after);
  for (const auto& [name, layout] : b) {
    auto it = a.find(name);
    if (it == a.end() || it->second == layout) continue;
    return FailedPrecondition("struct layout changes: '" + name + "' (size " + SizeOf(it->second) + " -> " +
                              SizeOf(layout) + " bytes)")
        .WithHint("objects of the old layout stay in memory: a live patch cannot change a struct that "
                  "existing code uses; add state with shadow variables instead");
  }
  return Status::Ok();
}

}  // namespace hv::builder
