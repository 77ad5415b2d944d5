#include "patcher/symbol_table.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <map>
#include <numeric>
#include <unordered_map>

#include "base/hex.h"
#include "patcher/vmcoreinfo.h"

namespace hv::patcher {
namespace {

constexpr std::size_t kMaxTextBytes = 64ull << 20;

std::string ObjectName(std::string_view module) {
  return module.empty() ? "vmlinux" : std::string(module);
}

bool IsPseudoModule(std::string_view m) {
  return m == "bpf" || m == "__builtin__ftrace" || m == "__builtin__kprobes";
}

struct ParsedLine {
  std::uint64_t address = 0;
  char type = '?';
  std::string_view name, module;
};

Result<ParsedLine> ParseLine(std::string_view line, int line_no) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument("line " + std::to_string(line_no) + " '" +
                           std::string(line.substr(0, 80)) + "': " + std::string(why));
  };
  ParsedLine p;
  const std::size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0 || sp1 > 16) return bad("no address");
  auto [ptr, ec] = std::from_chars(line.data(), line.data() + sp1, p.address, 16);
  if (ec != std::errc() || ptr != line.data() + sp1) return bad("address is not hex");
  if (line.size() < sp1 + 4 || line[sp1 + 2] != ' ') return bad("no type letter");
  p.type = line[sp1 + 1];
  std::string_view rest = line.substr(sp1 + 3);
  const std::size_t tab = rest.find('\t');
  p.name = rest.substr(0, tab);
  if (tab != std::string_view::npos) {
    std::string_view m = rest.substr(tab + 1);
    if (m.size() < 3 || m.front() != '[' || m.back() != ']') return bad("module is not in brackets");
    p.module = m.substr(1, m.size() - 2);
  }
  if (p.name.empty() || p.name.find_first_of(" \t") != std::string_view::npos) {
    return bad("bad symbol name");
  }
  return p;
}

Result<SymbolTable> ParseText(std::string_view text, bool system_map, std::uint64_t kaslr) {
  if (text.size() > kMaxTextBytes) {
    return InvalidArgument("symbol text of " + std::to_string(text.size()) +
                           " bytes exceeds the limit of " + std::to_string(kMaxTextBytes));
  }
  // Object name -> symbols, keeping the order objects first appear in.
  std::vector<std::string> order;
  std::unordered_map<std::string, std::vector<KernelSymbol>> objects;
  int line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    HV_ASSIGN_OR_RETURN(ParsedLine p, ParseLine(line, line_no));
    if (system_map && !p.module.empty()) {
      return InvalidArgument("line " + std::to_string(line_no) + ": a System.map has no modules");
    }
    if (IsPseudoModule(p.module)) continue;
    KernelSymbol s;
    s.name = std::string(p.name);
    s.address = p.address;
    if (system_map && p.address >= kStartKernelMap) s.address += kaslr;
    s.type = p.type;
    s.module = std::string(p.module);
    auto [it, inserted] = objects.try_emplace(s.module);
    if (inserted) order.push_back(s.module);
    it->second.push_back(std::move(s));
  }
  std::vector<SymbolTable::ObjectSymbols> batch;
  for (const std::string& m : order) batch.push_back({m, std::move(objects[m]), std::nullopt});
  SymbolTable table;
  HV_RETURN_IF_ERROR(table.AddObjects(std::move(batch)));
  return table;
}

}  // namespace

Status SymbolTable::AddObject(std::string_view module, std::vector<KernelSymbol> symbols,
                              std::optional<std::uint64_t> end) {
  std::vector<ObjectSymbols> one;
  one.push_back(ObjectSymbols{std::string(module), std::move(symbols), end});
  return AddObjects(std::move(one));
}

Status SymbolTable::AddObjects(std::vector<ObjectSymbols> objects) {
  std::size_t total = symbols_.size();
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const std::string& module = objects[i].module;
    bool dup = false;
    for (const Object& o : objects_) dup = dup || o.module == module;
    for (std::size_t j = 0; j < i; ++j) dup = dup || objects[j].module == module;
    if (dup) {
      return InvalidArgument("object '" + ObjectName(module) + "' is already in the symbol table");
    }
    total += objects[i].symbols.size();
  }
  if (total >= kNone) return InvalidArgument("too many symbols");
  bool adopt_first = false;

  // The first object's vector becomes the table when it has room for everything (the kallsyms
  // decoder leaves headroom for the modules): no copy of ~100k symbols.
  if (symbols_.empty() && !objects.empty() && objects.front().symbols.capacity() >= total) {
    adopt_first = true;
  } else {
    symbols_.reserve(total);
  }
  for (ObjectSymbols& obj : objects) {
    std::vector<KernelSymbol>& symbols = obj.symbols;
    // Sizes: bounded by the next strictly higher address within the object.
    std::vector<std::uint32_t> order(symbols.size());
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return symbols[a].address < symbols[b].address;
    });
    for (std::size_t i = 0; i < order.size();) {
      std::size_t j = i;
      while (j < order.size() && symbols[order[j]].address == symbols[order[i]].address) ++j;
      const std::uint64_t addr = symbols[order[i]].address;
      std::uint64_t size = 0;
      if (j < order.size()) {
        // Per-cpu values (offsets below the kernel image window) are not bounded by the first
        // image symbol: that would make the last of them cover every address in between.
        const std::uint64_t next = symbols[order[j]].address;
        size = addr < kStartKernelMap && next >= kStartKernelMap ? 0 : next - addr;
      } else if (obj.end && *obj.end > addr) {
        size = *obj.end - addr;
      }
      for (std::size_t k = i; k < j; ++k) symbols[order[k]].size = size;
      i = j;
    }
    objects_.push_back(Object{obj.module, symbols_.size(), symbols.size()});
    for (KernelSymbol& s : symbols) s.module = obj.module;
    if (adopt_first) {
      symbols_ = std::move(symbols);
      adopt_first = false;
      continue;
    }
    for (KernelSymbol& s : symbols) symbols_.push_back(std::move(s));
  }
  Reindex();
  return Status::Ok();
}

void SymbolTable::Reindex() {
  std::size_t slots = 16;
  while (slots < 2 * symbols_.size()) slots *= 2;
  name_slots_.assign(slots, kNone);
  next_same_name_.assign(symbols_.size(), kNone);
  std::vector<std::uint32_t> last_same_name(symbols_.size(), kNone);  // per chain head
  const std::hash<std::string_view> hash;
  for (std::uint32_t i = 0; i < symbols_.size(); ++i) {
    const std::string_view name = symbols_[i].name;
    std::size_t slot = hash(name) & (slots - 1);
    while (name_slots_[slot] != kNone && symbols_[name_slots_[slot]].name != name) {
      slot = (slot + 1) & (slots - 1);
    }
    // sympos: objects are contiguous in symbols_, so the previous symbol of this name is either
    // in the same object (count on) or in an earlier one (start again): O(1) per symbol, even
    // for a hostile table of a million identical names.
    if (name_slots_[slot] == kNone) {
      name_slots_[slot] = i;
      last_same_name[i] = i;
      symbols_[i].sympos = 1;
      continue;
    }
    const std::uint32_t head = name_slots_[slot];
    const std::uint32_t prev = last_same_name[head];
    symbols_[i].sympos = symbols_[prev].module == symbols_[i].module ? symbols_[prev].sympos + 1 : 1;
    next_same_name_[prev] = i;
    last_same_name[head] = i;
  }
  by_address_.resize(symbols_.size());
  std::iota(by_address_.begin(), by_address_.end(), 0u);
  std::sort(by_address_.begin(), by_address_.end(), [&](std::uint32_t a, std::uint32_t b) {
    return symbols_[a].address != symbols_[b].address ? symbols_[a].address < symbols_[b].address
                                                      : a < b;
  });
}

std::uint32_t SymbolTable::FirstNamed(std::string_view name) const {
  if (name_slots_.empty()) return kNone;
  const std::size_t mask = name_slots_.size() - 1;
  for (std::size_t slot = std::hash<std::string_view>()(name) & mask;; slot = (slot + 1) & mask) {
    const std::uint32_t i = name_slots_[slot];
    if (i == kNone || symbols_[i].name == name) return i;
  }
}

std::vector<std::string> SymbolTable::modules() const {
  std::vector<std::string> out;
  for (const Object& o : objects_) {
    if (!o.module.empty()) out.push_back(o.module);
  }
  return out;
}

std::size_t SymbolTable::CountIn(std::string_view module) const {
  for (const Object& o : objects_) {
    if (o.module == module) return o.count;
  }
  return 0;
}

std::vector<const KernelSymbol*> SymbolTable::FindAll(std::string_view name) const {
  std::vector<const KernelSymbol*> out;
  for (std::uint32_t i = FirstNamed(name); i != kNone; i = next_same_name_[i]) {
    out.push_back(&symbols_[i]);
  }
  return out;
}

Result<const KernelSymbol*> SymbolTable::Find(std::string_view module, std::string_view name,
                                              std::uint32_t sympos) const {
  std::vector<const KernelSymbol*> in_object;
  for (const KernelSymbol* s : FindAll(name)) {
    if (s->module == module) in_object.push_back(s);  // table order: kallsyms order per object
  }
  const std::string where = "symbol '" + std::string(name) + "' in object '" + ObjectName(module) + "'";
  if (in_object.empty()) return NotFound(where + " not found");
  if (sympos == 0) {
    if (in_object.size() > 1) {
      return InvalidArgument("unresolvable ambiguity for " + where + ": " +
                             std::to_string(in_object.size()) + " occurrences, give a sympos");
    }
    return in_object.front();
  }
  if (sympos > in_object.size()) {
    return NotFound("symbol position " + std::to_string(sympos) + " for " + where +
                    " not found: " + std::to_string(in_object.size()) + " occurrences");
  }
  return in_object[sympos - 1];
}

Result<const KernelSymbol*> SymbolTable::FindByAddress(std::uint64_t address) const {
  auto it = std::upper_bound(by_address_.begin(), by_address_.end(), address,
                             [&](std::uint64_t a, std::uint32_t i) { return a < symbols_[i].address; });
  // Look back over a few candidates: a module symbol just below may not cover the address while
  // a larger vmlinux symbol further down does (and aliases share an address).
  const KernelSymbol* best = nullptr;
  for (int steps = 0; it != by_address_.begin() && steps < 64; ++steps) {
    --it;
    const KernelSymbol& s = symbols_[*it];
    const bool covers = address < s.address + s.size || (s.size == 0 && address == s.address);
    if (covers && (!best || (best->module.empty() == s.module.empty() && best->address == s.address) ||
                   (s.module.empty() && !best->module.empty()))) {
      best = &s;  // by_address_ is index-ordered among aliases: walking back ends on the first
    }
    if (best && s.address < best->address) break;
  }
  if (!best) return NotFound("no symbol contains address " + Hex(address));
  return best;
}

Result<SymbolTable> ParseKallsymsText(std::string_view text) { return ParseText(text, false, 0); }

Result<SymbolTable> ParseSystemMap(std::string_view text, std::uint64_t kaslr_offset) {
  return ParseText(text, true, kaslr_offset);
}

}  // namespace hv::patcher
