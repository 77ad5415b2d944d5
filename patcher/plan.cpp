#include "patcher/plan.h"

#include <algorithm>
#include <set>

#include "base/hex.h"
#include "patcher/plain_entry.h"
#include "patcher/trampoline.h"

namespace hv::patcher {

namespace {

// True when the image places a __jump_table with entries.
bool KeyNodesNeeded(const PatchModule& module, const PatchImage& image) {
  for (const auto& p : image.sections) {
    if (module.sections()[p.section].name == "__jump_table" && p.size != 0) return true;
  }
  return false;
}

// The run-pre records a module built by `hvpatch build` carries, or none.
Result<std::vector<RunPreFunction>> RunPreRecords(const PatchModule& module) {
  for (const auto& s : module.sections()) {
    if (s.name == kRunPreSection) return ParseRunPre(s.bytes);
  }
  return std::vector<RunPreFunction>{};
}

Result<PatchPlan> Build(const PatchModule& module, const SymbolResolver& resolver,
                        const GuestCodeReader& reader, const ArenaLayout& arena, const PlanOptions& options) {
  HV_ASSIGN_OR_RETURN(PatchImage image, SelectImage(module, {.shadow_module = options.shadow != nullptr}));
  // The shadow module's tables go after the image's data, in the same run.
  std::uint64_t tables_offset = 0;
  if (options.shadow != nullptr) {
    auto& data = image.size[static_cast<std::size_t>(MemoryClass::kData)];
    tables_offset = (data + 63) & ~std::uint64_t{63};
    data = tables_offset + ShadowTablesSize(*options.shadow, module, image);
  }

  PatchPlan plan(arena);
  plan.name = module.name();
  plan.replace = module.replace();
  std::array<std::uint64_t, kMemoryClasses> base{};
  for (std::size_t c = 0; c < kMemoryClasses; ++c) {
    const auto memory = static_cast<MemoryClass>(c);
    const std::uint32_t pages = image.Pages(memory);
    if (pages == 0) {
      base[c] = arena.base_va();  // nothing is placed there
      continue;
    }
    HV_ASSIGN_OR_RETURN(ArenaAllocation a, plan.arena_after.Allocate(module.name(), pages, memory));
    base[c] = arena.Va(a.offset());
    plan.allocations.push_back(a);
  }
  HV_ASSIGN_OR_RETURN(LinkedPatch linked, Link(module, image, resolver, base));
  plan.fentry_nops = linked.fentry_nops;
  if (options.shadow != nullptr) {
    HV_ASSIGN_OR_RETURN(plan.tables, FinishKernelTables(module, image, linked, options.cpu));
    if (KeyNodesNeeded(module, image)) {
      if (options.shadow->keys.node_size == 0 || !options.read_key) {
        return Unimplemented("the patch uses static keys (__jump_table) and this guest's cannot be linked: " +
                             options.shadow->keys_error);
      }
      HV_ASSIGN_OR_RETURN(plan.jump_table, FinishJumpTable(module, image, linked, options.shadow->keys, options.read_key));
    }
    const auto code = static_cast<std::size_t>(MemoryClass::kCode);
    const auto data = static_cast<std::size_t>(MemoryClass::kData);
    const PlacedSection* tm = image.this_module ? image.Find(*image.this_module) : nullptr;
    ShadowPlacement at;
    at.module_va = tm != nullptr ? base[data] + tm->offset : 0;
    at.tables_va = base[data] + tables_offset;
    at.code_va = base[code];
    at.code_size = std::uint64_t{image.Pages(MemoryClass::kCode)} * kArenaPageSize;
    at.extable_va = plan.tables.extable_va;
    at.num_exentries = plan.tables.num_exentries;
    at.bug_table_va = plan.tables.bug_table_va;
    at.num_bugs = plan.tables.num_bugs;
    at.jump_entries_va = plan.jump_table.va;
    at.num_jump_entries = plan.jump_table.count;
    HV_ASSIGN_OR_RETURN(ShadowModuleImage shadow, BuildShadowModule(*options.shadow, module, image, linked, at));
    auto& bytes = linked.bytes[data];
    std::copy(shadow.module.begin(), shadow.module.end(), bytes.begin() + static_cast<long>(tm->offset));
    std::copy(shadow.tables.begin(), shadow.tables.end(), bytes.begin() + static_cast<long>(tables_offset));
    plan.shadow = at;
    plan.shadow_symbols = shadow.symbols;
  }

  for (const auto& a : plan.allocations) {
    ArenaWrite w;
    w.va = arena.Va(a.offset());
    w.gpa = arena.Gpa(a.offset());
    w.memory = a.memory;
    w.reuses_code_pages = a.reuses_code_pages;
    const auto& b = linked.bytes[static_cast<std::size_t>(a.memory)];
    w.bytes.assign(a.size(), a.memory == MemoryClass::kCode ? 0xcc : 0x00);
    std::copy(b.begin(), b.end(), w.bytes.begin());
    plan.arena_writes.push_back(std::move(w));
    for (std::uint32_t p = a.first_page; p < a.first_page + a.pages; ++p) {
      const std::uint64_t v = plan.arena_after.PteValue(p);
      if (v == arena.PteValue(p)) continue;  // a retired page of the same kind: already mapped
      plan.pte_writes.push_back({p, arena.Gpa(std::uint64_t{p} * 8), v});
    }
  }

  HV_ASSIGN_OR_RETURN(std::vector<RunPreFunction> run_pre, RunPreRecords(module));
  const AddressRange arena_range{arena.base_va(), arena.base_va() + arena.size()};
  std::set<std::uint64_t> sites;
  std::optional<TextSites> text_sites;  // read once, for the first plain entry
  for (const auto& lf : linked.functions) {
    const KlpFunction& f = lf.klp;
    const std::string who = "function '" + f.old_name + "' in '" + f.object + "'";
    auto fail = [&](const Status& s) { return s.WithContext(who); };
    Result<ResolvedSymbol> old = resolver.Resolve(f.old_name, f.object, f.old_sympos);
    const RunPreFunction* record = nullptr;
    for (const auto& r : run_pre) {
      if (r.name == f.old_name && r.object == f.object) record = &r;
    }
    if (record != nullptr) {
      auto choice = SelectByRunPre(*record, resolver, reader);
      if (!choice.ok()) return fail(choice.status());
      old = choice->symbol;
    }
    if (!old.ok()) return fail(old.status());
    if (old->per_cpu) return fail(InvalidArgument("'" + f.old_name + "' is a per-cpu variable, not a function"));
    auto bytes = reader.Read(old->address, kEntryReadSize);
    if (!bytes.ok()) return fail(bytes.status().WithContext("reading its entry at " + Hex(old->address)));
    auto entry = ClassifyEntry(*bytes, old->address, arena_range);
    if (!entry.ok()) return fail(entry.status());
    if (entry->kind == EntryKind::kPlainCode) {
      // No ftrace site: overwrite the first instructions, Ksplice's way (plain_entry.h).
      if (f.object != "vmlinux") {
        return fail(FailedPrecondition("its entry is plain code (" + entry->covered + "), not the ftrace nop; "
                                       "hvpatch patches plain entries in vmlinux only"));
      }
      if (!text_sites) {
        auto read = ReadVmlinuxTextSites(resolver, reader);
        if (!read.ok()) return fail(read.status().WithContext("proving its plain entry safe to overwrite"));
        text_sites = std::move(*read);
      }
      HV_RETURN_IF_ERROR(CheckNoTextSiteUnderJump(*entry, f.old_name, *text_sites));
      for (const auto& [b, e] : ColdParts(resolver, f.old_name)) plan.busy.push_back({b, e});
    } else {
      HV_RETURN_IF_ERROR(CheckPatchable(*entry, f.old_name));
    }
    const std::uint64_t site_end = entry->site_va + 5 - old->address;
    if (old->size != 0 && old->size < site_end) {
      return fail(InvalidArgument("it is " + std::to_string(old->size) + " bytes, too small for a 5-byte jump"));
    }
    if (!sites.insert(entry->site_va).second) {
      return fail(FailedPrecondition("its entry " + Hex(entry->site_va) + " is also another function's in this patch"));
    }
    auto jmp = JmpRel32(entry->site_va, lf.new_va);
    if (!jmp.ok()) return fail(jmp.status());
    FunctionPlan fp;
    fp.klp = f;
    fp.old_va = old->address;
    fp.old_size = old->size;
    fp.new_va = lf.new_va;
    fp.new_size = f.new_size;
    fp.entry = *entry;
    fp.trampoline = *jmp;
    fp.stacked = entry->kind == EntryKind::kArenaJump;
    plan.busy.push_back({old->address, old->address + std::max<std::uint64_t>(old->size, site_end)});
    plan.functions.push_back(std::move(fp));
  }
  return plan;
}

}  // namespace

Result<RunPreChoice> SelectByRunPre(const RunPreFunction& record, const SymbolResolver& resolver,
                                    const GuestCodeReader& reader) {
  // Every occurrence of the name: sympos 0 if unique, else 1, 2, ... (kallsyms order).
  HV_ASSIGN_OR_RETURN(auto candidates, Occurrences(resolver, record.name, record.object));
  std::vector<RunPreChoice> matches;
  std::string mismatches;
  for (const auto& [pos, sym] : candidates) {
    auto bytes = reader.Read(sym.address, record.code.size());
    if (!bytes.ok()) return bytes.status().WithContext("run-pre: reading '" + record.name + "' at " + Hex(sym.address));
    auto m = MatchRunPre(record, *bytes);
    if (!m) {
      // What the code refers to must be the guest's too (for the names kallsyms knows uniquely).
      m = MatchRunPreRelocations(record, *bytes, sym.address, [&](const std::string& name) -> std::optional<std::uint64_t> {
        auto r = resolver.Resolve(name, "", 0);
        if (!r.ok()) return std::nullopt;
        return r->address;
      });
    }
    if (!m) {
      matches.push_back({sym, pos});
      continue;
    }
    if (!mismatches.empty()) mismatches += "; ";
    mismatches += (candidates.size() > 1 ? "sympos " + std::to_string(pos) + " at " + Hex(sym.address) + ": " : "") +
                  "offset " + Hex(m->offset) + " (" + m->detail + ")";
  }
  const std::string who = "run-pre: '" + record.name + "' in '" + record.object + "'";
  if (matches.empty()) {
    return FailedPrecondition(who + " differs from the build at " + mismatches)
        .WithHint("the patch was built from another source than the running kernel's; build it "
                  "against that kernel's source (hvpatch build --kernel RELEASE)");
  }
  if (matches.size() > 1) {
    return FailedPrecondition(who + " matches " + std::to_string(matches.size()) +
                              " functions of that name; the patch cannot tell which to replace");
  }
  return matches[0];
}

Result<PatchPlan> BuildPlan(const PatchModule& module, const SymbolResolver& resolver,
                            const GuestCodeReader& reader, const ArenaLayout& arena, const PlanOptions& options) {
  auto r = Build(module, resolver, reader, arena, options);
  if (!r.ok()) return r.status().WithContext("planning patch '" + module.name() + "'");
  return r;
}

}  // namespace hv::patcher
