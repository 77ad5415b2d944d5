#include "patcher/symbol_table.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <span>
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
  std::unordered_map<std::string, SymbolList> objects;
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
    std::uint64_t address = p.address;
    if (system_map && p.address >= kStartKernelMap) address += kaslr;
    auto [it, inserted] = objects.try_emplace(std::string(p.module));
    if (inserted) order.push_back(std::string(p.module));
    it->second.Add(p.name, address, p.type);
  }
  std::vector<SymbolTable::ObjectSymbols> batch;
  for (const std::string& m : order) batch.push_back({m, std::move(objects[m]), std::nullopt});
  SymbolTable table;
  HV_RETURN_IF_ERROR(table.AddObjects(std::move(batch)));
  return table;
}

}  // namespace

SymbolList::SymbolList(std::initializer_list<KernelSymbol> symbols) {
  for (const KernelSymbol& s : symbols) Add(s.name, s.address, s.type);
}

SymbolList::SymbolList(const std::vector<KernelSymbol>& symbols) {
  for (const KernelSymbol& s : symbols) Add(s.name, s.address, s.type);
}

void SymbolList::Reserve(std::size_t symbols, std::size_t name_bytes) {
  records_.reserve(symbols);
  names_.reserve(name_bytes);
}

void SymbolList::Add(std::string_view name, std::uint64_t address, char type) {
  name = name.substr(0, std::numeric_limits<std::uint16_t>::max());
  SymbolRecord r;
  r.address = address;
  r.type = type;
  r.name_offset = static_cast<std::uint32_t>(names_.size());
  r.name_length = static_cast<std::uint16_t>(name.size());
  names_.insert(names_.end(), name.begin(), name.end());
  records_.push_back(r);
}

KernelSymbol SymbolList::at(std::size_t i) const {
  const SymbolRecord& r = records_[i];
  KernelSymbol s;
  s.name = std::string_view(names_.data() + r.name_offset, r.name_length);
  s.address = r.address;
  s.type = r.type;
  return s;
}

// A batch of objects as added together: records in table order, one buffer of names, and the
// indexes. The arrays are views, either of the vectors below or of an image read in place.
struct SymbolTable::Segment {
  static constexpr std::uint32_t kNone = ~0u;

  struct Object {
    std::string module;
    std::uint32_t first = 0, count = 0;  // range in records
  };
  std::vector<Object> objects;  // never resized once built: symbols view these names
  std::size_t first = 0;        // table index of records[0]

  std::span<const SymbolRecord> records;
  std::span<const char> names;
  // Name index: an open-addressing table of each distinct name's first record, and per record
  // the next one of the same name (in table order, so always a higher index, or kNone).
  std::span<const std::uint32_t> name_slots, next_same_name;
  // Record indices sorted by address, then index.
  std::span<const std::uint32_t> by_address;

  std::vector<SymbolRecord> own_records;
  std::vector<char> own_names;
  std::vector<std::uint32_t> own_slots, own_next, own_by_address;
  std::shared_ptr<const void> owner;  // an image's bytes, read in place

  std::string_view Name(const SymbolRecord& r) const {
    return std::string_view(names.data() + r.name_offset, r.name_length);
  }
  KernelSymbol At(std::uint32_t i) const {
    const SymbolRecord& r = records[i];
    return KernelSymbol{Name(r), r.address, r.size, r.type, r.sympos, objects[r.object].module};
  }
  std::uint32_t FirstNamed(std::string_view name) const {
    if (name_slots.empty()) return kNone;
    const std::size_t mask = name_slots.size() - 1;
    for (std::size_t slot = std::hash<std::string_view>()(name) & mask;; slot = (slot + 1) & mask) {
      const std::uint32_t i = name_slots[slot];
      if (i == kNone || Name(records[i]) == name) return i;
    }
  }
  const Object* ObjectNamed(std::string_view module, std::uint32_t* index) const {
    for (std::uint32_t o = 0; o < objects.size(); ++o) {
      if (objects[o].module == module) {
        *index = o;
        return &objects[o];
      }
    }
    return nullptr;
  }
  // Sizes, sympos and the indexes of own_records (filled and tagged with their objects).
  void Index(std::span<const std::optional<std::uint64_t>> ends);
  void ViewOwn() {
    records = own_records;
    names = own_names;
    name_slots = own_slots;
    next_same_name = own_next;
    by_address = own_by_address;
  }
  // Over a segment's by_address: the best symbol holding `address`, as FindByAddress defines it.
  const SymbolRecord* Covering(std::uint64_t address, std::uint32_t* index) const;
};

namespace {

// Sizes of one object's records, given their indices in address order (then index).
void SizeObject(std::vector<SymbolRecord>& records, std::span<const std::uint32_t> order,
                std::optional<std::uint64_t> end) {
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    const std::uint64_t addr = records[order[i]].address;
    while (j < order.size() && records[order[j]].address == addr) ++j;
    std::uint64_t size = 0;
    if (j < order.size()) {
      // Per-cpu values (offsets below the kernel image window) are not bounded by the first
      // image symbol: that would make the last of them cover every address in between.
      const std::uint64_t next = records[order[j]].address;
      size = addr < kStartKernelMap && next >= kStartKernelMap ? 0 : next - addr;
    } else if (end && *end > addr) {
      size = *end - addr;
    }
    for (std::size_t k = i; k < j; ++k) records[order[k]].size = size;
    i = j;
  }
}

}  // namespace

void SymbolTable::Segment::Index(std::span<const std::optional<std::uint64_t>> ends) {
  const std::uint32_t n = static_cast<std::uint32_t>(own_records.size());
  own_by_address.resize(n);
  std::iota(own_by_address.begin(), own_by_address.end(), 0u);
  // kallsyms lists vmlinux nearly in address order already, so this sort is cheap.
  std::sort(own_by_address.begin(), own_by_address.end(), [&](std::uint32_t a, std::uint32_t b) {
    return own_records[a].address != own_records[b].address ? own_records[a].address < own_records[b].address
                                                            : a < b;
  });
  if (objects.size() == 1) {
    SizeObject(own_records, own_by_address, ends[0]);
  } else {
    // Sizes are bounded within an object: its records in address order, object by object.
    std::vector<std::uint32_t> order = own_by_address;
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return own_records[a].object < own_records[b].object;
    });
    std::size_t at = 0;
    for (std::uint32_t o = 0; o < objects.size(); ++o) {
      SizeObject(own_records, std::span(order).subspan(at, objects[o].count), ends[o]);
      at += objects[o].count;
    }
  }

  std::size_t slots = 16;
  while (slots < 2 * static_cast<std::size_t>(n)) slots *= 2;
  own_slots.assign(slots, kNone);
  own_next.assign(n, kNone);
  std::vector<std::uint32_t> last_same_name(n, kNone);  // per chain head
  const std::hash<std::string_view> hash;
  for (std::uint32_t i = 0; i < n; ++i) {
    SymbolRecord& r = own_records[i];
    const std::string_view name(own_names.data() + r.name_offset, r.name_length);
    std::size_t slot = hash(name) & (slots - 1);
    while (own_slots[slot] != kNone) {
      const SymbolRecord& h = own_records[own_slots[slot]];
      if (std::string_view(own_names.data() + h.name_offset, h.name_length) == name) break;
      slot = (slot + 1) & (slots - 1);
    }
    // sympos: objects are contiguous, so the previous symbol of this name is either in the same
    // object (count on) or in an earlier one (start again): O(1) per symbol, even for a hostile
    // table of a million identical names.
    if (own_slots[slot] == kNone) {
      own_slots[slot] = i;
      last_same_name[i] = i;
      r.sympos = 1;
      continue;
    }
    const std::uint32_t head = own_slots[slot];
    const std::uint32_t prev = last_same_name[head];
    r.sympos = own_records[prev].object == r.object ? own_records[prev].sympos + 1 : 1;
    own_next[prev] = i;
    last_same_name[head] = i;
  }
  ViewOwn();
}

const SymbolRecord* SymbolTable::Segment::Covering(std::uint64_t address, std::uint32_t* index) const {
  auto it = std::upper_bound(by_address.begin(), by_address.end(), address,
                             [&](std::uint64_t a, std::uint32_t i) { return a < records[i].address; });
  // Look back over a few candidates: a module symbol just below may not cover the address while
  // a larger vmlinux symbol further down does (and aliases share an address).
  const SymbolRecord* best = nullptr;
  auto is_vmlinux = [&](const SymbolRecord& r) { return objects[r.object].module.empty(); };
  for (int steps = 0; it != by_address.begin() && steps < 64; ++steps) {
    --it;
    const SymbolRecord& s = records[*it];
    const bool covers = address < s.address + s.size || (s.size == 0 && address == s.address);
    if (covers && (!best || (is_vmlinux(*best) == is_vmlinux(s) && best->address == s.address) ||
                   (is_vmlinux(s) && !is_vmlinux(*best)))) {
      best = &s;  // by_address is index-ordered among aliases: walking back ends on the first
      *index = *it;
    }
    if (best && s.address < best->address) break;
  }
  return best;
}

SymbolTable::SymbolTable() = default;
SymbolTable::~SymbolTable() = default;
SymbolTable::SymbolTable(SymbolTable&&) noexcept = default;
SymbolTable& SymbolTable::operator=(SymbolTable&&) noexcept = default;

Status SymbolTable::AddObject(std::string_view module, SymbolList symbols, std::optional<std::uint64_t> end) {
  std::vector<ObjectSymbols> one;
  one.push_back(ObjectSymbols{std::string(module), std::move(symbols), end});
  return AddObjects(std::move(one));
}

Status SymbolTable::AddObjects(std::vector<ObjectSymbols> objects) {
  std::size_t total = 0, name_bytes = 0;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const std::string& module = objects[i].module;
    bool dup = false;
    for (const auto& seg : segments_) {
      std::uint32_t unused;
      dup = dup || seg->ObjectNamed(module, &unused) != nullptr;
    }
    for (std::size_t j = 0; j < i; ++j) dup = dup || objects[j].module == module;
    if (dup) {
      return InvalidArgument("object '" + ObjectName(module) + "' is already in the symbol table");
    }
    total += objects[i].symbols.size();
    name_bytes += objects[i].symbols.names_.size();
  }
  if (total >= Segment::kNone || name_bytes > std::numeric_limits<std::uint32_t>::max()) {
    return InvalidArgument("too many symbols");
  }
  if (objects.empty()) return Status::Ok();

  auto seg = std::make_unique<Segment>();
  seg->first = size_;
  std::vector<std::optional<std::uint64_t>> ends;
  if (objects.size() == 1) {
    // The common case (vmlinux, decoded): the list's buffers become the segment's, no copy.
    seg->own_records = std::move(objects[0].symbols.records_);
    seg->own_names = std::move(objects[0].symbols.names_);
  } else {
    seg->own_records.reserve(total);
    seg->own_names.reserve(name_bytes);
  }
  for (std::uint32_t o = 0; o < objects.size(); ++o) {
    SymbolList& list = objects[o].symbols;
    const std::uint32_t first = objects.size() == 1 ? 0 : static_cast<std::uint32_t>(seg->own_records.size());
    if (objects.size() > 1) {
      const std::uint32_t base = static_cast<std::uint32_t>(seg->own_names.size());
      seg->own_names.insert(seg->own_names.end(), list.names_.begin(), list.names_.end());
      for (SymbolRecord r : list.records_) {
        r.name_offset += base;
        seg->own_records.push_back(r);
      }
    }
    const std::uint32_t count = objects.size() == 1 ? static_cast<std::uint32_t>(seg->own_records.size())
                                                    : static_cast<std::uint32_t>(list.records_.size());
    for (std::uint32_t i = first; i < first + count; ++i) seg->own_records[i].object = o;
    seg->objects.push_back({std::move(objects[o].module), first, count});
    ends.push_back(objects[o].end);
  }
  seg->Index(ends);
  size_ += seg->records.size();
  segments_.push_back(std::move(seg));
  return Status::Ok();
}

const SymbolTable::Segment* SymbolTable::SegmentOf(std::size_t* i) const {
  for (const auto& seg : segments_) {
    if (*i < seg->records.size()) return seg.get();
    *i -= seg->records.size();
  }
  return nullptr;
}

KernelSymbol SymbolTable::at(std::size_t i) const {
  const Segment* seg = SegmentOf(&i);
  return seg ? seg->At(static_cast<std::uint32_t>(i)) : KernelSymbol{};
}

std::vector<std::string> SymbolTable::modules() const {
  std::vector<std::string> out;
  for (const auto& seg : segments_) {
    for (const Segment::Object& o : seg->objects) {
      if (!o.module.empty()) out.push_back(o.module);
    }
  }
  return out;
}

std::size_t SymbolTable::CountIn(std::string_view module) const {
  for (const auto& seg : segments_) {
    std::uint32_t o;
    if (const Segment::Object* obj = seg->ObjectNamed(module, &o)) return obj->count;
  }
  return 0;
}

std::vector<KernelSymbol> SymbolTable::FindAll(std::string_view name) const {
  std::vector<KernelSymbol> out;
  for (const auto& seg : segments_) {
    for (std::uint32_t i = seg->FirstNamed(name); i != Segment::kNone; i = seg->next_same_name[i]) {
      out.push_back(seg->At(i));
    }
  }
  return out;
}

Result<KernelSymbol> SymbolTable::Find(std::string_view module, std::string_view name,
                                       std::uint32_t sympos) const {
  const std::string where = "symbol '" + std::string(name) + "' in object '" + ObjectName(module) + "'";
  for (const auto& seg : segments_) {
    std::uint32_t o;
    if (!seg->ObjectNamed(module, &o)) continue;
    // Table order is kallsyms order within the object.
    std::uint32_t count = 0, first = Segment::kNone, wanted = Segment::kNone;
    for (std::uint32_t i = seg->FirstNamed(name); i != Segment::kNone; i = seg->next_same_name[i]) {
      if (seg->records[i].object != o) continue;
      if (++count == 1) first = i;
      if (count == sympos) wanted = i;
    }
    if (count == 0) break;
    if (sympos == 0) {
      if (count > 1) {
        return InvalidArgument("unresolvable ambiguity for " + where + ": " + std::to_string(count) +
                               " occurrences, give a sympos");
      }
      return seg->At(first);
    }
    if (wanted == Segment::kNone) {
      return NotFound("symbol position " + std::to_string(sympos) + " for " + where +
                      " not found: " + std::to_string(count) + " occurrences");
    }
    return seg->At(wanted);
  }
  return NotFound(where + " not found");
}

Result<KernelSymbol> SymbolTable::FindByAddress(std::uint64_t address) const {
  // Each segment's best, then across segments as one walk over all of them would choose:
  // vmlinux over a module; within one of them the highest address, then the earlier segment.
  const Segment* best_seg = nullptr;
  const SymbolRecord* best = nullptr;
  std::uint32_t best_index = 0;
  for (const auto& seg : segments_) {
    std::uint32_t index = 0;
    const SymbolRecord* r = seg->Covering(address, &index);
    if (!r) continue;
    const bool vmlinux = seg->objects[r->object].module.empty();
    const bool best_vmlinux = best && best_seg->objects[best->object].module.empty();
    const bool better = !best || (vmlinux && !best_vmlinux) || (vmlinux == best_vmlinux && r->address > best->address);
    if (better) {
      best = r;
      best_seg = seg.get();
      best_index = index;
    }
  }
  if (!best) return NotFound("no symbol contains address " + Hex(address));
  return best_seg->At(best_index);
}

namespace {

// The image's layout: this header, then the records, the names, the name slots, the next-same-
// name links and the address order, each padded to 8 bytes.
struct ImageHeader {
  char magic[8];
  std::uint32_t record_size;
  std::uint32_t reserved;
  std::uint64_t hash_probe;  // std::hash of a fixed string: the index is only as good as its hash
  std::uint64_t records;
  std::uint64_t name_bytes;
  std::uint64_t slots;
  std::uint64_t reserved2;
};
static_assert(sizeof(ImageHeader) == 56);
constexpr char kImageMagic[8] = {'H', 'V', 'S', 'Y', 'M', 'T', 'B', '1'};

std::uint64_t HashProbe() { return std::hash<std::string_view>()("hvpatch symbol index probe"); }
std::size_t Pad8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

void Append(std::string& out, const void* data, std::size_t bytes) {
  out.append(static_cast<const char*>(data), bytes);
  out.append(Pad8(bytes) - bytes, '\0');
}

}  // namespace

Result<std::string> SymbolTable::Image() const {
  if (segments_.size() != 1 || segments_[0]->objects.size() != 1 || !segments_[0]->objects[0].module.empty()) {
    return FailedPrecondition("only a table of vmlinux alone has an image");
  }
  const Segment& seg = *segments_[0];
  ImageHeader h{};
  std::memcpy(h.magic, kImageMagic, sizeof(h.magic));
  h.record_size = sizeof(SymbolRecord);
  h.hash_probe = HashProbe();
  h.records = seg.records.size();
  h.name_bytes = seg.names.size();
  h.slots = seg.name_slots.size();
  std::string out;
  out.reserve(sizeof(h) + Pad8(seg.records.size_bytes()) + Pad8(seg.names.size()) +
              Pad8(seg.name_slots.size_bytes()) + 2 * Pad8(seg.by_address.size_bytes()));
  out.append(reinterpret_cast<const char*>(&h), sizeof(h));
  Append(out, seg.records.data(), seg.records.size_bytes());
  Append(out, seg.names.data(), seg.names.size());
  Append(out, seg.name_slots.data(), seg.name_slots.size_bytes());
  Append(out, seg.next_same_name.data(), seg.next_same_name.size_bytes());
  Append(out, seg.by_address.data(), seg.by_address.size_bytes());
  return out;
}

Result<SymbolTable> SymbolTable::FromImage(std::string_view image, std::shared_ptr<const void> owner) {
  auto bad = [](const std::string& why) { return InvalidArgument("symbol table image: " + why); };
  ImageHeader h;
  if (image.size() < sizeof(h)) return bad("shorter than its header");
  if (reinterpret_cast<std::uintptr_t>(image.data()) % 8 != 0) return bad("not 8-byte aligned in memory");
  std::memcpy(&h, image.data(), sizeof(h));
  if (std::memcmp(h.magic, kImageMagic, sizeof(h.magic)) != 0) return bad("no HVSYMTB1 magic");
  if (h.record_size != sizeof(SymbolRecord)) return bad("records of " + std::to_string(h.record_size) + " bytes");
  if (h.hash_probe != HashProbe()) return bad("indexed with another string hash");
  if (h.records == 0 || h.records >= Segment::kNone || h.name_bytes > std::numeric_limits<std::uint32_t>::max() ||
      h.slots < 2 * h.records || h.slots > (std::uint64_t{1} << 33) || (h.slots & (h.slots - 1)) != 0) {
    return bad("counts out of bounds (" + std::to_string(h.records) + " records, " + std::to_string(h.slots) +
               " slots)");
  }
  const std::size_t n = h.records;
  const std::size_t want = sizeof(h) + Pad8(n * sizeof(SymbolRecord)) + Pad8(h.name_bytes) + Pad8(h.slots * 4) +
                           2 * Pad8(n * 4);
  if (image.size() != want) return bad(std::to_string(image.size()) + " bytes where the counts give " + std::to_string(want));

  auto seg = std::make_unique<Segment>();
  const char* p = image.data() + sizeof(h);
  seg->records = std::span(reinterpret_cast<const SymbolRecord*>(p), n);
  p += Pad8(n * sizeof(SymbolRecord));
  seg->names = std::span(p, h.name_bytes);
  p += Pad8(h.name_bytes);
  seg->name_slots = std::span(reinterpret_cast<const std::uint32_t*>(p), h.slots);
  p += Pad8(h.slots * 4);
  seg->next_same_name = std::span(reinterpret_cast<const std::uint32_t*>(p), n);
  p += Pad8(n * 4);
  seg->by_address = std::span(reinterpret_cast<const std::uint32_t*>(p), n);

  // Checks that keep every lookup in bounds and finite: names inside the buffer, links forward
  // only, a free slot to end each probe, the address order a permutation and sorted.
  for (std::size_t i = 0; i < n; ++i) {
    const SymbolRecord& r = seg->records[i];
    if (r.object != 0 || r.name_length == 0 || std::uint64_t{r.name_offset} + r.name_length > h.name_bytes) {
      return bad("record " + std::to_string(i) + " is out of bounds");
    }
    const std::uint32_t next = seg->next_same_name[i];
    if (next != Segment::kNone && (next <= i || next >= n)) return bad("a broken name link at " + std::to_string(i));
  }
  std::size_t free_slots = 0;
  for (std::uint32_t v : seg->name_slots) {
    if (v == Segment::kNone) ++free_slots;
    else if (v >= n) return bad("a name slot out of bounds");
  }
  if (free_slots == 0) return bad("a name index with no free slot");
  std::vector<bool> seen(n);
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint32_t v = seg->by_address[k];
    if (v >= n || seen[v]) return bad("the address order is not a permutation");
    seen[v] = true;
    if (k > 0 && seg->records[seg->by_address[k - 1]].address > seg->records[v].address) {
      return bad("the address order is not sorted");
    }
  }
  seg->objects.push_back({"", 0, static_cast<std::uint32_t>(n)});
  seg->owner = std::move(owner);
  SymbolTable t;
  t.size_ = n;
  t.segments_.push_back(std::move(seg));
  return t;
}

Result<SymbolTable> ParseKallsymsText(std::string_view text) { return ParseText(text, false, 0); }

Result<SymbolTable> ParseSystemMap(std::string_view text, std::uint64_t kaslr_offset) {
  return ParseText(text, true, kaslr_offset);
}

}  // namespace hv::patcher
