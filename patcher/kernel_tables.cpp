#include "patcher/kernel_tables.h"

#include <algorithm>
#include <cstring>

#include "base/hex.h"

namespace hv::patcher {
namespace {

constexpr std::uint64_t kExEntry = 12;
constexpr std::uint64_t kAltEntry = 12;
constexpr std::uint16_t kAltFlagInv = 1u << 15;  // ALTINSTR_FLAG_INV

// The linked bytes at a guest address, across the memory classes.
class LinkedBytes {
 public:
  explicit LinkedBytes(LinkedPatch& l) : l_(l) {}
  std::uint8_t* At(std::uint64_t va, std::uint64_t n, MemoryClass* cls = nullptr) {
    for (std::size_t c = 0; c < kMemoryClasses; ++c) {
      const std::uint64_t base = l_.base[c];
      const std::uint64_t size = l_.bytes[c].size();
      if (va >= base && va - base <= size && n <= size - (va - base)) {
        if (cls != nullptr) *cls = static_cast<MemoryClass>(c);
        return l_.bytes[c].data() + (va - base);
      }
    }
    return nullptr;
  }

 private:
  LinkedPatch& l_;
};

struct Found {
  const PlacedSection* placed = nullptr;
  std::uint64_t va = 0;
};

Found FindPlaced(const PatchModule& m, const PatchImage& image, const LinkedPatch& linked, std::string_view name) {
  for (const auto& p : image.sections) {
    if (m.sections()[p.section].name == name) {
      return {&p, linked.base[static_cast<std::size_t>(p.memory)] + p.offset};
    }
  }
  return {};
}

std::int32_t Get32(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
void Put32(std::uint8_t* p, std::int32_t v) { std::memcpy(p, &v, 4); }

Status SortExTable(const PatchModule& m, const PatchImage& image, LinkedPatch& linked, KernelTables* out) {
  const Found ex = FindPlaced(m, image, linked, "__ex_table");
  if (ex.placed == nullptr) return Status::Ok();
  if (ex.placed->size % kExEntry != 0) {
    return InvalidArgument("section '__ex_table' is " + std::to_string(ex.placed->size) + " bytes, not a multiple of " +
                           std::to_string(kExEntry));
  }
  LinkedBytes bytes(linked);
  std::uint8_t* table = bytes.At(ex.va, ex.placed->size);
  if (table == nullptr) return Internal("section '__ex_table' is not in the linked image");
  struct Entry {
    std::uint64_t insn, fixup;
    std::int32_t data;
  };
  const std::size_t n = ex.placed->size / kExEntry;
  std::vector<Entry> entries(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t va = ex.va + i * kExEntry;
    const std::uint8_t* e = table + i * kExEntry;
    entries[i] = {va + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(e))),
                  va + 4 + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(e + 4))), Get32(e + 8)};
    MemoryClass cls;
    if (bytes.At(entries[i].insn, 1, &cls) == nullptr || cls != MemoryClass::kCode) {
      return InvalidArgument("__ex_table entry " + std::to_string(i) + " names " + Hex(entries[i].insn) +
                             ", which is not in the patch's code");
    }
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.insn < b.insn; });
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t va = ex.va + i * kExEntry;
    std::uint8_t* e = table + i * kExEntry;
    Put32(e, static_cast<std::int32_t>(entries[i].insn - va));
    Put32(e + 4, static_cast<std::int32_t>(entries[i].fixup - (va + 4)));
    Put32(e + 8, entries[i].data);
  }
  out->extable_va = ex.va;
  out->num_exentries = static_cast<std::uint32_t>(n);
  return Status::Ok();
}

Status ApplyAlternatives(const PatchModule& m, const PatchImage& image, LinkedPatch& linked, const CpuFeatures& cpu,
                         KernelTables* out) {
  const Found alt = FindPlaced(m, image, linked, ".altinstructions");
  if (alt.placed == nullptr) return Status::Ok();
  if (alt.placed->size % kAltEntry != 0) {
    return InvalidArgument("section '.altinstructions' is " + std::to_string(alt.placed->size) +
                           " bytes, not a multiple of " + std::to_string(kAltEntry));
  }
  LinkedBytes bytes(linked);
  const std::uint8_t* table = bytes.At(alt.va, alt.placed->size);
  if (table == nullptr) return Internal("section '.altinstructions' is not in the linked image");
  const std::size_t n = alt.placed->size / kAltEntry;
  out->alternatives = n;
  // In table order: a later entry may overwrite an earlier one's site, as in the kernel.
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t va = alt.va + i * kAltEntry;
    const std::uint8_t* e = table + i * kAltEntry;
    const std::uint64_t instr = va + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(e)));
    const std::uint64_t repl = va + 4 + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(e + 4)));
    std::uint16_t cpuid;
    std::memcpy(&cpuid, e + 8, 2);
    const std::uint8_t instrlen = e[10], repllen = e[11];
    const std::string who = ".altinstructions entry " + std::to_string(i);
    MemoryClass cls;
    std::uint8_t* orig = bytes.At(instr, instrlen, &cls);
    if (orig == nullptr || cls != MemoryClass::kCode) {
      return InvalidArgument(who + ": original " + Hex(instr) + " is not in the patch's code");
    }
    const std::uint8_t* replacement = bytes.At(repl, repllen);
    if (replacement == nullptr) return InvalidArgument(who + ": replacement " + Hex(repl) + " is not in the patch");
    if (repllen > instrlen) {
      return InvalidArgument(who + ": replacement (" + std::to_string(repllen) + " bytes) is longer than the original (" +
                             std::to_string(instrlen) + ")");
    }
    const std::uint16_t feature = cpuid & static_cast<std::uint16_t>(~kAltFlagInv);
    auto has = cpu.Has(feature);
    if (!has.ok()) return has.status().WithContext(who);
    if (*has == ((cpuid & kAltFlagInv) != 0)) continue;  // !has == !inv: keep the original
    std::vector<std::uint8_t> buf(replacement, replacement + repllen);
    if (repllen == 5 && buf[0] == 0xe8) {
      Put32(buf.data() + 1, static_cast<std::int32_t>(Get32(buf.data() + 1) + static_cast<std::int64_t>(repl - instr)));
    }
    if (repllen == 5 && buf[0] == 0xe9) {
      const std::uint64_t target = repl + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(Get32(buf.data() + 1)));
      Put32(buf.data() + 1, static_cast<std::int32_t>(target - (instr + 5)));
    }
    buf.resize(instrlen, 0x90);
    std::memcpy(orig, buf.data(), buf.size());
    ++out->alternatives_applied;
  }
  return Status::Ok();
}

}  // namespace

Result<bool> CpuFeatures::Has(std::uint32_t bit) const {
  if (bit / 32 >= words.size()) {
    return Unimplemented("CPU feature bit " + std::to_string(bit) + " is beyond the guest's " +
                         std::to_string(words.size()) + " capability words");
  }
  return ((words[bit / 32] >> (bit % 32)) & 1) != 0;
}

Result<KernelTables> FinishKernelTables(const PatchModule& module, const PatchImage& image, LinkedPatch& linked,
                                        const CpuFeatures& cpu) {
  KernelTables t;
  // Alternatives first: the kernel applies them at load (module_finalize), and the exception
  // table names instruction addresses, which alternatives never move.
  HV_RETURN_IF_ERROR(ApplyAlternatives(module, image, linked, cpu, &t));
  HV_RETURN_IF_ERROR(SortExTable(module, image, linked, &t));
  const Found bugs = FindPlaced(module, image, linked, "__bug_table");
  if (bugs.placed != nullptr) {
    constexpr std::uint64_t kBugEntry = 12;
    if (bugs.placed->size % kBugEntry != 0 || bugs.placed->memory != MemoryClass::kData) {
      return InvalidArgument("section '__bug_table' is " + std::to_string(bugs.placed->size) +
                             " bytes of " + std::string(MemoryClassName(bugs.placed->memory)) +
                             ", not writable 12-byte entries");
    }
    t.bug_table_va = bugs.va;
    t.num_bugs = static_cast<std::uint32_t>(bugs.placed->size / kBugEntry);
  }
  return t;
}

}  // namespace hv::patcher
