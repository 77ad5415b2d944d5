#include "builder/object_diff.h"

#include <elf.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <tuple>

#include "base/hex.h"

namespace hv::builder {

namespace {

// Compiler-generated local objects (__func__.N, __already_done.N, __key.N, descriptor.N): the
// numbering is the assembler's, and a new copy is as good as the old one.
bool IsNumberedLocal(const ObjectEntity& e) { return !e.global && CanonicalName(e.name) != e.name; }

const ObjectEntity* Match(const KernelObject& in, const ObjectEntity& e) {
  if (const ObjectEntity* x = in.Find(e.name); x != nullptr && x->function == e.function) return x;
  const ObjectEntity* c = in.FindCanonical(CanonicalName(e.name));
  return c != nullptr && c->function == e.function ? c : nullptr;
}

std::string Kind(const ObjectEntity& e) {
  if (e.function) return "function";
  return e.global ? "global data" : "static data";
}

struct MetadataTable {
  std::string_view name;
  std::uint64_t entry;
};
// struct bug_entry (DEBUG_BUGVERBOSE), exception_table_entry, alt_instr: 12; jump_entry: 16;
// static_call_site: 8; paravirt_patch_site: 16; .smp_locks: one s32.
constexpr MetadataTable kMetadataTables[] = {
    {"__bug_table", 12}, {"__ex_table", 12}, {".altinstructions", 12}, {"__jump_table", 16},
    {".static_call_sites", 8}, {".parainstructions", 16}, {".smp_locks", 4},
};

}  // namespace

std::uint64_t MetadataEntrySize(std::string_view section) {
  for (const auto& t : kMetadataTables) {
    if (t.name == section) return t.entry;
  }
  return 0;
}

std::string FirstDifference(const ObjectEntity& a, const ObjectEntity& b) {
  if (a.size != b.size) {
    return "size " + std::to_string(a.size) + " -> " + std::to_string(b.size) + " bytes";
  }
  // Relocation fields are holes: compare their meaning, not their (zero) bytes.
  std::vector<bool> hole(a.size, false);
  for (const auto* rels : {&a.relocations, &b.relocations}) {
    for (const auto& r : *rels) {
      const std::size_t w = std::max<std::size_t>(RelocationWidth(r.type), 1);
      for (std::size_t i = 0; i < w && r.offset + i < a.size; ++i) hole[r.offset + i] = true;
    }
  }
  std::size_t ri = 0;
  for (std::uint64_t off = 0; off < a.size; ++off) {
    // Relocations in offset order, interleaved with the bytes, so the first difference is first.
    while (ri < a.relocations.size() && ri < b.relocations.size() &&
           std::min(a.relocations[ri].offset, b.relocations[ri].offset) <= off) {
      const auto& ra = a.relocations[ri];
      const auto& rb = b.relocations[ri];
      if (ra.offset != rb.offset) {
        return "offset " + Hex(std::min(ra.offset, rb.offset)) + ": a relocation moved";
      }
      if (ra.type != rb.type || ra.target.Key() != rb.target.Key()) {
        return "offset " + Hex(ra.offset) + ": refers to " + rb.target.Describe() + " instead of " +
               ra.target.Describe();
      }
      ++ri;
    }
    if (!a.nobits && !b.nobits && !hole[off] && a.bytes[off] != b.bytes[off]) {
      return "offset " + Hex(off) + ": byte " + Hex(a.bytes[off]) + " -> " + Hex(b.bytes[off]);
    }
  }
  if (a.relocations.size() != b.relocations.size()) {
    const auto& longer = a.relocations.size() > b.relocations.size() ? a.relocations : b.relocations;
    return "offset " + Hex(longer[std::min(a.relocations.size(), b.relocations.size())].offset) +
           ": a relocation " + (a.relocations.size() > b.relocations.size() ? "is gone" : "is new");
  }
  return "";
}

Result<ObjectDiff> CompareObjects(const KernelObject& orig, const KernelObject& patched) {
  const std::string ctx = "comparing '" + patched.file_name() + "'";
  ObjectDiff d;

  // 1. The exported interface: modules of the running kernel link against it.
  {
    std::set<std::string> a(orig.exports().begin(), orig.exports().end());
    std::set<std::string> b(patched.exports().begin(), patched.exports().end());
    for (const auto& n : b) {
      if (!a.count(n)) {
        return FailedPrecondition("exported interface changes: '" + n + "' is newly exported")
            .WithContext(ctx).WithHint("a live patch cannot add to the kernel's symbol table; export nothing new");
      }
    }
    for (const auto& n : a) {
      if (!b.count(n)) {
        return FailedPrecondition("exported interface changes: '" + n + "' is no longer exported")
            .WithContext(ctx).WithHint("modules already loaded still link against it");
      }
    }
  }

  // 2. Every entity of the patched object: the same, changed, or new.
  std::set<std::string> carried;  // patched entity names whose section is carried
  for (const ObjectEntity& p : patched.entities()) {
    const ObjectEntity* o = Match(orig, p);
    if (o == nullptr) {
      if (p.init) {
        return FailedPrecondition("__init " + Kind(p) + " '" + p.name + "' is new")
            .WithContext(ctx).WithHint("init code ran at boot and is gone; a live patch cannot run it");
      }
      if (p.function) {
        d.new_functions.push_back(p.name);
      } else {
        d.new_data.push_back(p.name);
      }
      carried.insert(p.name);
      continue;
    }
    const std::string diff = FirstDifference(*o, p);
    if (diff.empty()) continue;
    if (p.init) {
      return FailedPrecondition("__init " + Kind(p) + " '" + p.name + "' changes (" + diff + ")")
          .WithContext(ctx).WithHint("init code ran at boot and is gone; a live patch cannot change it");
    }
    if (p.function) {
      if (IsColdPart(p.name)) continue;  // travels with its parent (below)
      d.replaced.push_back({o->name, p.name, diff});
      carried.insert(p.name);
      continue;
    }
    // Data: the running kernel's copy holds state (or its address is compared), so only constant
    // static data a new copy can stand in for may change.
    if (p.writable || p.global) {
      if (o->size != p.size) {
        return FailedPrecondition(Kind(p) + " '" + p.name + "' changes size from " + std::to_string(o->size) +
                                  " to " + std::to_string(p.size) + " bytes")
            .WithContext(ctx).WithHint("a live patch cannot change existing data or a struct layout: "
                                       "the running kernel's copy holds state; use shadow variables");
      }
      if (IsNumberedLocal(p)) continue;  // __already_done.N and the like: a fresh copy is fine
      return FailedPrecondition(Kind(p) + " '" + p.name + "' changes (" + diff + ")")
          .WithContext(ctx).WithHint("a live patch cannot change existing data: the running kernel's "
                                     "copy holds state");
    }
    d.new_data.push_back(p.name);  // a changed constant: the patch carries its own copy
    carried.insert(p.name);
  }
  // Cold parts follow their parents.
  for (const ObjectEntity& p : patched.entities()) {
    if (!p.function || !IsColdPart(p.name) || carried.count(p.name)) continue;
    const std::string parent(p.name.substr(0, p.name.size() - 5));
    if (carried.count(parent)) {
      d.new_functions.push_back(p.name);
      carried.insert(p.name);
    }
  }

  // 3. The closure: what carried code refers to is carried too when the running kernel has no
  // copy of it (string literals, anonymous constants, compiler-numbered statics); otherwise it
  // is the running kernel's, by the original object's name.
  const auto& secs = patched.elf().sections;
  std::set<std::uint32_t> sections;
  std::deque<std::uint32_t> work;
  auto carry_section = [&](std::uint32_t s) {
    if (sections.insert(s).second) work.push_back(s);
  };
  std::map<std::string, std::string> kernel_names;
  for (const ObjectEntity& p : patched.entities()) {
    if (carried.count(p.name)) carry_section(p.section);
  }
  while (!work.empty()) {
    const std::uint32_t s = work.front();
    work.pop_front();
    for (const auto& r : secs[s].relocations) {
      const auto& sym = patched.elf().symbols[r.symbol];
      if (sym.section == SHN_UNDEF || sym.section >= secs.size()) continue;  // the kernel's, by name
      const RelocTarget t = patched.TargetOf(r);
      if (t.kind == RelocTarget::Kind::kString) {
        carry_section(sym.section);
        continue;
      }
      const ObjectEntity* e = t.kind == RelocTarget::Kind::kSymbol ? patched.Find(t.name) : nullptr;
      if (e == nullptr) {
        const auto& ts = secs[sym.section];
        if (ts.writable()) {
          return FailedPrecondition("section '" + secs[s].name + "' refers to " + t.Describe() +
                                    ", writable data that no symbol names")
              .WithContext(ctx).WithHint("the running kernel's copy cannot be found by name");
        }
        carry_section(sym.section);  // anonymous constants, jump tables
        continue;
      }
      if (carried.count(e->name)) {
        carry_section(e->section);
        continue;
      }
      const ObjectEntity* o = Match(orig, *e);
      const bool copy_ok = !e->function && !e->writable && !e->global && IsNumberedLocal(*e);
      if (o == nullptr || copy_ok) {
        carried.insert(e->name);
        carry_section(e->section);
        if (o == nullptr && !e->function) d.new_data.push_back(e->name);
        continue;
      }
      kernel_names[e->name] = o->name;
    }
  }
  // 4. Metadata entries of carried code, and what they refer to (bug_entry's file name string,
  // alternatives' replacement code): carried too, through the same closure.
  for (std::uint32_t si = 0; si < secs.size(); ++si) {
    const std::uint64_t es = MetadataEntrySize(secs[si].name);
    if (es == 0 || secs[si].size % es != 0) continue;
    for (const auto& r : secs[si].relocations) {
      if (r.offset % es != 0) continue;  // the first field names the code
      const auto& sym = patched.elf().symbols[r.symbol];
      if (sym.section >= secs.size() || !sections.count(sym.section)) continue;
      d.carried_entries.push_back({si, r.offset, es});
      for (const auto& q : secs[si].relocations) {
        if (q.offset < r.offset || q.offset >= r.offset + es) continue;
        const auto& qs = patched.elf().symbols[q.symbol];
        if (qs.section == SHN_UNDEF || qs.section >= secs.size() || sections.count(qs.section)) continue;
        const RelocTarget t = patched.TargetOf(q);
        const ObjectEntity* e = t.kind == RelocTarget::Kind::kSymbol ? patched.Find(t.name) : nullptr;
        if (e != nullptr && !e->function) {
          if (const ObjectEntity* o = Match(orig, *e)) {
            kernel_names[e->name] = o->name;  // a static key, say: the running kernel's
            continue;
          }
        }
        carry_section(qs.section);
      }
    }
  }
  while (!work.empty()) {  // what the newly carried sections refer to
    const std::uint32_t s = work.front();
    work.pop_front();
    for (const auto& r : secs[s].relocations) {
      const auto& sym = patched.elf().symbols[r.symbol];
      if (sym.section == SHN_UNDEF || sym.section >= secs.size() || sections.count(sym.section)) continue;
      const RelocTarget t = patched.TargetOf(r);
      const ObjectEntity* e = t.kind == RelocTarget::Kind::kSymbol ? patched.Find(t.name) : nullptr;
      const ObjectEntity* o = e != nullptr ? Match(orig, *e) : nullptr;
      if (o != nullptr && !carried.count(e->name)) {
        kernel_names[e->name] = o->name;
      } else {
        carry_section(sym.section);
      }
    }
  }
  d.carried_sections.assign(sections.begin(), sections.end());
  d.kernel_names.assign(kernel_names.begin(), kernel_names.end());
  std::sort(d.carried_entries.begin(), d.carried_entries.end(),
            [](const auto& a, const auto& b) { return std::tie(a.section, a.offset) < std::tie(b.section, b.offset); });
  std::sort(d.new_data.begin(), d.new_data.end());
  d.new_data.erase(std::unique(d.new_data.begin(), d.new_data.end()), d.new_data.end());
  return d;
}

}  // namespace hv::builder
