#include "patcher/patch_engine.h"

#include <algorithm>
#include <cstring>
#include <ctime>
#include <map>
#include <random>
#include <set>

#include "base/hex.h"
#include "patcher/arena_layout.h"
#include "patcher/atomic_replace.h"
#include "patcher/direct_map_alias.h"
#include "patcher/entry_site.h"
#include "patcher/patch_module.h"
#include "patcher/plan.h"
#include "patcher/shadow_module.h"
#include "patcher/shared_overlay_words.h"

namespace hv::patcher {
namespace {

// The kernel-image window: __START_KERNEL_map. One PMD table maps its 1 GiB in 2 MiB entries.
constexpr std::uint64_t kKernelImageBase = 0xffffffff80000000ull;
constexpr std::uint64_t kSlot = 2ull << 20;
// Arena owner of data runs the guest kernel keeps pointers to for good (static key tombstones,
// static_keys.h). Patch names are module names, which never contain '-'.
constexpr std::string_view kStaticKeyKeeper = "hvpatch-key-tombstones";



std::uint64_t ReadQ(const std::vector<std::uint8_t>& b) {
  std::uint64_t v = 0;
  std::memcpy(&v, b.data(), std::min<std::size_t>(8, b.size()));
  return v;
}

// Kernel virtual memory for the planner, through the kernel's own page tables.
class KernelCodeReader : public GuestCodeReader {
 public:
  KernelCodeReader(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode) : mem_(mem), mode_(mode) {}
  Result<std::vector<std::uint8_t>> Read(std::uint64_t va, std::size_t size) const override {
    std::vector<std::uint8_t> out(size);
    HV_RETURN_IF_ERROR(vmm::ReadVirt(mem_, mode_, va, out));
    return out;
  }

 private:
  const vmm::GuestPhysMemory& mem_;
  vmm::PagingMode mode_;
};

bool SiteHolds(const std::vector<std::uint8_t>& now, const std::vector<std::uint8_t>& want) {
  return !want.empty() && now == want;
}

// A new boot mark: random, non-zero, with bit 0 (present) clear so that, as entry 0 of the
// arena's PTE table, the MMU ignores it (a not-present entry's other bits are the OS's).
std::uint64_t NewBootMark() {
  std::random_device rd;
  std::uint64_t m = (std::uint64_t{rd()} << 32) ^ rd();
  m &= ~std::uint64_t{1};
  return m ? m : 2;
}

// The PTE table as first written: the layout's, with the boot mark in entry 0.
std::vector<std::uint8_t> PteTableWithMark(const ArenaLayout& layout, std::uint64_t mark) {
  const auto table = layout.PteTable();
  std::vector<std::uint8_t> out(table.begin(), table.end());
  std::memcpy(out.data(), &mark, 8);
  return out;
}

}  // namespace

Result<std::vector<std::uint8_t>> PatchEngine::ReadKernel(std::uint64_t va, std::size_t n) {
  std::vector<std::uint8_t> out(n);
  HV_RETURN_IF_ERROR(vmm::ReadVirt(vm_, kernel_.KernelPaging(), va, out));
  return out;
}

std::optional<KernelEdit> PatchEngine::ShadowUnlinkEdit(const std::string& name, const ArenaLayout& layout) {
  // The shadow module, if the patch has one linked, lies in its data runs: found and unlinked
  // inside the pause (a patch applied without one has none to find). A kernel whose layout
  // cannot be read gave none at apply either.
  const KernelBtf* btf = kernel_.Btf();
  if (btf == nullptr) return std::nullopt;
  auto shadow = ShadowModuleLayout::Read(*btf, kernel_);
  if (!shadow.ok()) return std::nullopt;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
  for (const auto& a : layout.allocations()) {
    if (a.owner == name && a.memory == MemoryClass::kData) {
      runs.push_back({layout.Va(a.offset()), layout.Va(a.offset()) + a.size()});
    }
  }
  if (runs.empty()) return std::nullopt;
  return KernelEdit([l = *shadow, runs](KernelWords& mem) -> Status {
    for (const auto& [begin, end] : runs) {
      HV_ASSIGN_OR_RETURN(std::uint64_t mod, FindLinkedModule(mem, l, begin, end));
      if (mod != 0) return UnlinkShadowModule(mem, l, mod).WithContext("unlinking the shadow module");
    }
    return Status::Ok();
  });
}

Result<CpuFeatures> PatchEngine::ReadCpuFeatures(const KernelBtf& btf) {
  auto read = [&]() -> Result<CpuFeatures> {
    HV_ASSIGN_OR_RETURN(ResolvedSymbol cpu, kernel_.Resolve("boot_cpu_data", "vmlinux", 0));
    HV_ASSIGN_OR_RETURN(std::uint64_t off, btf.Offset("cpuinfo_x86", "x86_capability"));
    HV_ASSIGN_OR_RETURN(std::uint64_t size, btf.MemberSize("cpuinfo_x86", "x86_capability"));
    if (size == 0 || size % 4 != 0 || size > 256) return InvalidArgument("x86_capability is " + std::to_string(size) + " bytes");
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> raw, ReadKernel(cpu.address + off, size));
    CpuFeatures f;
    f.words.resize(size / 4);
    std::memcpy(f.words.data(), raw.data(), size);
    return f;
  }();
  if (!read.ok()) return read.status().WithContext("reading the guest CPU's features (boot_cpu_data)");
  return read;
}

void PatchEngine::SetBootIdentity(Ledger& ledger) const {
  ledger.kernel_build_id = kernel_.BuildId();
  ledger.kaslr_offset = kernel_.KaslrOffset();
  ledger.page_table_gpa = kernel_.PageTableGpa();
}

std::string PatchEngine::ForeignBootReason(const Ledger& ledger) {
  if (!ledger.kernel_build_id.empty() && ledger.kernel_build_id != kernel_.BuildId()) {
    return "kernel build-id " + ledger.kernel_build_id + ", the guest runs " + kernel_.BuildId();
  }
  // Ledgers written before the boot identity (format 1) have neither: the arena checks remain.
  if (ledger.page_table_gpa != 0) {
    if (ledger.kaslr_offset != kernel_.KaslrOffset()) {
      return "KASLR offset " + Hex(ledger.kaslr_offset) + ", the guest's is " + Hex(kernel_.KaslrOffset());
    }
    if (kernel_.PageTableGpa() != 0 && ledger.page_table_gpa != kernel_.PageTableGpa()) {
      return "kernel page tables at " + Hex(ledger.page_table_gpa) + ", the guest's are at " +
             Hex(kernel_.PageTableGpa());
    }
  }
  const bool live = ledger.arena.committed ||
                    std::any_of(ledger.patches.begin(), ledger.patches.end(),
                                [](const LedgerPatch& p) { return p.state != PatchState::kApplying; });
  if (ledger.arena.mapped && live) {
    // A boot rebuilds the kernel's page tables from the image: hvpatch's PMD entry does not
    // survive one, even when KASLR puts the kernel at the same place (nokaslr).
    std::vector<std::uint8_t> raw(8);
    if (!vm_.ReadPhys(ledger.arena.pmd_entry_gpa, raw).ok()) {
      return "the arena's PMD entry at " + Hex(ledger.arena.pmd_entry_gpa) + " cannot be read";
    }
    if (ReadQ(raw) != ledger.arena.pmd_entry) {
      return "the arena's PMD entry at " + Hex(ledger.arena.pmd_entry_gpa) + " is " + Hex(ReadQ(raw)) + ", not " +
             Hex(ledger.arena.pmd_entry) + ": the guest's page tables were rebuilt by a boot";
    }
    // The mark tells this ledger's mapping from an identical one made by another state
    // directory, and a new QEMU's fresh arena file from the one migration carried.
    if (ledger.boot_mark != 0) {
      if (!vm_.ReadPhys(ledger.arena.bar_gpa, raw).ok()) return "the arena's boot mark cannot be read";
      if (ReadQ(raw) != ledger.boot_mark) {
        return "hvpatch's boot mark in the arena is " + Hex(ReadQ(raw)) + ", the ledger's is " + Hex(ledger.boot_mark);
      }
    }
  }
  return "";
}

Result<Ledger> PatchEngine::LoadLedger() {
  HV_ASSIGN_OR_RETURN(Ledger ledger, store_.Load());
  if (ledger.vm_identity.empty()) ledger.vm_identity = vm_.Identity();
  if (ledger.Empty()) {
    // Nothing of any boot in it: it simply becomes this boot's.
    SetBootIdentity(ledger);
    ledger.boot_mark = 0;
    return ledger;
  }
  const std::string reason = ForeignBootReason(ledger);
  if (reason.empty()) {
    if (ledger.page_table_gpa == 0) SetBootIdentity(ledger);  // a format-1 ledger: complete it
    return ledger;
  }
  // Another boot's ledger: kept for the record, never acted on. Its addresses mean nothing in
  // this boot, so not one byte is written to the guest on its behalf (not even a resume).
  ArchivedLedger record;
  record.reason = reason;
  record.at = static_cast<std::int64_t>(std::time(nullptr));
  for (const auto& p : ledger.patches) record.patches.push_back(p.name);
  record.arena_va = ledger.arena.mapped ? ledger.arena.base_va : 0;
  HV_ASSIGN_OR_RETURN(record.path, store_.Archive());
  Ledger fresh;
  fresh.vm_identity = ledger.vm_identity;
  SetBootIdentity(fresh);
  fresh.archived = std::move(ledger.archived);
  fresh.archived.push_back(record);
  if (fresh.archived.size() > Ledger::kArchivedKept) {
    fresh.archived.erase(fresh.archived.begin(),
                         fresh.archived.end() - static_cast<std::ptrdiff_t>(Ledger::kArchivedKept));
  }
  HV_RETURN_IF_ERROR(store_.Save(fresh).WithContext("writing the ledger after archiving '" + record.path + "'"));
  std::string names;
  for (const auto& n : record.patches) names += (names.empty() ? "" : ", ") + n;
  boot_notes_.push_back("the ledger of an earlier boot of this VM (" + reason + ") was archived as '" + record.path +
                        "'; " + (names.empty() ? std::string("it held no patch") : "its patches (" + names + ") went with that boot") +
                        ", and the VM is treated as unpatched");
  return fresh;
}

Result<std::uint64_t> PatchEngine::FindArenaSlot(const vmm::PagingMode& mode, std::uint64_t bar_gpa,
                                                 std::uint64_t* pmd_entry_gpa, std::uint64_t avoid_va) {
  // Walk to the PMD table of the kernel-image window (PGD[511] -> PUD[510] on 4-level paging).
  std::uint64_t table = mode.cr3 & vmm::pte::kAddrMask;
  for (int level = mode.la57 ? 5 : 4; level >= 3; --level) {
    const int shift = 12 + 9 * (level - 1);
    const std::uint64_t slot = table + ((kKernelImageBase >> shift) & 511) * 8;
    std::vector<std::uint8_t> raw(8);
    HV_RETURN_IF_ERROR(vm_.ReadPhys(slot, raw).WithContext("walking to the kernel-image PMD table"));
    const std::uint64_t e = ReadQ(raw);
    if (!(e & vmm::pte::kPresent) || (e & vmm::pte::kHuge)) {
      return FailedPrecondition("the kernel-image window is not mapped by a PMD table (level " +
                                std::to_string(level) + " entry " + Hex(e) + ")");
    }
    table = e & vmm::pte::kAddrMask;
  }
  std::vector<std::uint8_t> pmd(4096);
  HV_RETURN_IF_ERROR(vm_.ReadPhys(table, pmd).WithContext("reading the kernel-image PMD table"));
  // The device already mapped (through its PTE table in the BAR's first page, or as one huge
  // page) means a ledger we do not hold: another state directory, or a lost one. Its patches may
  // be live, and a fresh layout would rewrite their code and page table under them.
  for (std::uint64_t i = 0; i < 512; ++i) {
    std::uint64_t e;
    std::memcpy(&e, pmd.data() + i * 8, 8);
    if ((e & vmm::pte::kPresent) && (e & vmm::pte::kAddrMask & ~(kSlot - 1)) == bar_gpa) {
      return FailedPrecondition("the arena device (BAR " + Hex(bar_gpa) + ") is already mapped at " +
                                Hex(kKernelImageBase + i * kSlot) + ", but the ledger '" + store_.Describe() +
                                "' has no record of it")
          .WithHint("another hvpatch state directory holds this VM's patches (use its --state-dir); "
                    "applying from here would overwrite them. A reboot of the guest clears the mapping");
    }
  }
  const std::uint64_t end = kernel_.ImageEnd();
  if (end <= kKernelImageBase) return Internal("kernel image end " + Hex(end) + " below the window");
  // One empty slot as a guard after the image, then the first free one (the avoided one last).
  std::optional<std::uint64_t> avoided;
  for (std::uint64_t i = ((end - 1 - kKernelImageBase) / kSlot) + 2; i < 512; ++i) {
    std::uint64_t e;
    std::memcpy(&e, pmd.data() + i * 8, 8);
    if (e != 0) continue;
    if (kKernelImageBase + i * kSlot == avoid_va) {
      avoided = i;
      continue;
    }
    *pmd_entry_gpa = table + i * 8;
    return kKernelImageBase + i * kSlot;
  }
  if (avoided) {
    *pmd_entry_gpa = table + *avoided * 8;
    return kKernelImageBase + *avoided * kSlot;
  }
  return Unavailable("no free 2 MiB slot in the kernel-image window above " + Hex(end));
}

Result<CommitReport> PatchEngine::CommitWithLedger(Ledger& ledger, const CommitPlan& plan,
                                                   const RetryPolicy& retry, bool* wrote) {
  *wrote = false;
  // Recorded before the pause, so a crash inside it is recovered by resuming the VM.
  HV_ASSIGN_OR_RETURN(bool running, vm_.Running());
  ledger.paused_by_hvpatch = true;
  ledger.was_running = running;
  HV_RETURN_IF_ERROR(store_.Save(ledger).WithContext("writing the ledger"));
  if (hook_) hook_("ledger_written");
  Committer committer(vm_, stacks_, retry, hook_);
  auto report = committer.Commit(plan);
  *wrote = committer.wrote();
  if (report.ok()) {
    ledger.paused_by_hvpatch = false;
    return report;
  }
  // A failed commit may have left the VM paused (its resume failed, or QEMU's connection went):
  // the flag stays for the next run's recovery unless the run state is as it was.
  auto now = vm_.Running();
  ledger.paused_by_hvpatch = !(now.ok() && *now == ledger.was_running);
  return report;
}

Result<ApplyResult> PatchEngine::Apply(const ApplyRequest& request) {
  HV_ASSIGN_OR_RETURN(PatchModule module, LoadPatchModule(request.module, request.patch_path));
  HV_ASSIGN_OR_RETURN(Ledger ledger, LoadLedger());
  if (const LedgerPatch* p = ledger.Find(module.name())) {
    return FailedPrecondition("patch '" + module.name() + "' is already applied (state " +
                              std::string(PatchStateName(p->state)) + ")");
  }
  if (agent_) {
    // The guest's own view first: a function owned by an in-guest livepatch or by ftrace is
    // refused naming the owner (without an agent, the entry-site check refuses it unnamed).
    Status owned = agent_->CheckNotOwned(module.functions());
    if (!owned.ok() && owned.code() != Code::kUnavailable && owned.code() != Code::kDeadlineExceeded) return owned;
  }

  // The arena: mapped once, shared by all patches.
  const vmm::PagingMode mode = kernel_.KernelPaging();
  ArenaMapping mapping = ledger.arena;
  std::optional<ArenaLayout> layout;
  bool map_now = false;
  if (mapping.mapped) {
    auto l = ArenaLayout::Deserialize(mapping.layout);
    if (!l.ok()) return l.status().WithContext("ledger '" + store_.Describe() + "'");
    layout = std::move(*l);
    std::vector<std::uint8_t> raw(8);
    HV_RETURN_IF_ERROR(vm_.ReadPhys(mapping.pmd_entry_gpa, raw).WithContext("reading the arena PMD entry"));
    const std::uint64_t now = ReadQ(raw);
    if (now == 0) {
      map_now = true;  // an interrupted first apply recorded the mapping but never wrote it
    } else if (now != mapping.pmd_entry) {
      return FailedPrecondition("the arena slot " + Hex(mapping.base_va) + " holds PMD entry " + Hex(now) +
                                ", not hvpatch's " + Hex(mapping.pmd_entry))
          .WithHint("the ledger '" + store_.Describe() + "' does not match the guest");
    }
  } else {
    HV_ASSIGN_OR_RETURN(vmm::ArenaDevice dev, vm_.Arena());
    std::uint64_t pmd_gpa = 0;
    const std::uint64_t avoid = ledger.archived.empty() ? 0 : ledger.archived.back().arena_va;
    HV_ASSIGN_OR_RETURN(std::uint64_t slot, FindArenaSlot(mode, dev.bar_gpa, &pmd_gpa, avoid));
    HV_ASSIGN_OR_RETURN(ArenaLayout l, ArenaLayout::Create(slot, dev.bar_gpa, std::min(dev.size, kSlot)));
    layout = std::move(l);
    mapping = {true, slot, dev.bar_gpa, layout->size(), pmd_gpa, layout->PmdEntry(), "", false};
    map_now = true;
  }
  // This boot's mark goes into the arena with its PTE table, recorded ahead like every write.
  std::uint64_t boot_mark = ledger.boot_mark;
  if (map_now && boot_mark == 0) boot_mark = NewBootMark();

  const KernelCodeReader reader(vm_, mode);
  std::optional<ShadowModuleLayout> shadow;
  PlanOptions options;
  if (const KernelBtf* btf = kernel_.Btf()) {
    HV_ASSIGN_OR_RETURN(shadow, ShadowModuleLayout::Read(*btf, kernel_));
    options.shadow = &*shadow;
    HV_ASSIGN_OR_RETURN(options.cpu, ReadCpuFeatures(*btf));
    options.read_key = [this, off = shadow->keys.key_enabled](std::uint64_t key) -> Result<std::int32_t> {
      HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> raw, ReadKernel(key + off, 4));
      std::int32_t v;
      std::memcpy(&v, raw.data(), 4);
      return v;
    };
  }
  HV_ASSIGN_OR_RETURN(PatchPlan planned, BuildPlan(module, kernel_, reader, *layout, options));
  // Atomic replace: every hvpatch patch below is taken over in this pause (atomic_replace.h).
  // Recovery ran first, so all of them are applied. The new patch's pages were allocated with
  // theirs still in place: no page of a replaced patch is reused before it is idle.
  std::optional<AtomicReplacePlan> replacing;
  if (planned.replace && !ledger.patches.empty()) {
    std::vector<std::uint64_t> sites;
    for (const FunctionPlan& f : planned.functions) sites.push_back(f.entry.site_va);
    auto rp = PlanAtomicReplace(ledger.patches, *layout, sites);
    if (!rp.ok()) return rp.status().WithContext("atomic replace by patch '" + module.name() + "'");
    replacing = std::move(*rp);
  }

  ApplyResult result;
  result.name = module.name();
  result.fentry_nops = planned.fentry_nops;
  result.dry_run = request.dry_run;
  for (const auto& a : planned.allocations) result.arena_pages += a.pages;

  LedgerPatch record;
  record.name = module.name();
  record.state = PatchState::kApplying;
  record.applied_at = static_cast<std::int64_t>(std::time(nullptr));
  record.replace = planned.replace;
  if (replacing) {
    record.replaces = replacing->replaced;
    result.replaced = replacing->replaced;
    result.restored = replacing->restored_functions;
  }
  CommitPlan plan;
  // The stack check names a hit by its range: each range carries the old function it covers,
  // so "code busy" says which function a blocking task is in.
  for (const auto& r : planned.busy) {
    std::string what = "old code";
    for (const FunctionPlan& f : planned.functions) {
      if (f.old_va >= r.begin && f.old_va < r.end) what = f.klp.old_name;
    }
    plan.busy.push_back({r.begin, r.end, what});
  }
  for (const FunctionPlan& f : planned.functions) {
    FunctionReport fr{f.klp.old_name, f.klp.object, f.klp.old_sympos, f.old_va, f.entry.site_va, f.new_va,
                      std::string(EntryKindName(f.entry.kind)), ""};
    if (f.stacked) {
      // The patch below keeps serving until the switch: its code must be idle too.
      const LedgerPatch* below = ledger.TopAt(f.entry.site_va);
      if (!below) {
        return FailedPrecondition("function '" + f.klp.old_name + "' jumps into the arena but no patch in the ledger owns it")
            .WithHint("the ledger '" + store_.Describe() + "' does not match the guest");
      }
      fr.stacked_on = below->name;
      for (const auto& bf : below->functions) {
        if (bf.site == f.entry.site_va) {
          plan.busy.push_back({bf.new_addr, bf.new_addr + std::max<std::uint64_t>(bf.new_size, 1),
                               below->name + ":" + f.klp.old_name});
        }
      }
    }
    LedgerFunction lf;
    lf.name = f.klp.old_name;
    lf.object = f.klp.object;
    lf.sympos = f.klp.old_sympos;
    lf.old_addr = f.old_va;
    lf.old_size = f.old_size;
    lf.site = f.entry.site_va;
    lf.original.assign(f.entry.current.begin(), f.entry.current.end());
    if (replacing && replacing->originals.count(f.entry.site_va) != 0) {
      // Taken over from a replaced patch: this patch's revert gives the kernel's entry back.
      lf.original = replacing->originals.at(f.entry.site_va);
    }
    lf.trampoline.assign(f.trampoline.begin(), f.trampoline.end());
    lf.new_addr = f.new_va;
    lf.new_size = f.new_size;
    record.functions.push_back(lf);
    result.functions.push_back(fr);
  }

  // Arena pages first (fresh pages: plain writes; pages that held code: code writes), then the
  // PTEs that make them visible, the PMD entry on first use, and the trampolines last.
  for (const ArenaWrite& w : planned.arena_writes) {
    const std::string what = "arena " + std::string(MemoryClassName(w.memory)) + " of '" + module.name() + "'";
    if (w.reuses_code_pages) {
      plan.code_writes.push_back({w.va, {}, w.bytes, what});
    } else {
      plan.phys_writes.push_back({w.gpa, w.bytes, what});
    }
  }
  // Every page of the new runs gets its PTE written, not only those the plan sees change: a
  // retired page is assumed mapped, but one retired by the recovery of an apply killed before
  // its page-table writes never was ("PTE not present" on the code write). Rewriting the value
  // a present PTE already holds keeps the arena's TLB rule (a PTE never changes once present).
  std::set<std::uint32_t> pte_written;
  for (const PteWrite& w : planned.pte_writes) {
    std::vector<std::uint8_t> e(8);
    std::memcpy(e.data(), &w.value, 8);
    plan.phys_writes.push_back({w.gpa, e, "arena PTE " + std::to_string(w.page)});
    pte_written.insert(w.page);
  }
  for (const ArenaAllocation& a : planned.allocations) {
    for (std::uint32_t page = a.first_page; page < a.first_page + a.pages; ++page) {
      if (!pte_written.insert(page).second) continue;
      const std::uint64_t value = planned.arena_after.PteValue(page);
      std::vector<std::uint8_t> e(8);
      std::memcpy(e.data(), &value, 8);
      plan.phys_writes.push_back({layout->Gpa(std::uint64_t{page} * 8), e, "arena PTE " + std::to_string(page)});
    }
  }
  if (map_now) {
    // The whole PTE table first: a slot mapped for the first time must not expose stale bytes.
    plan.phys_writes.insert(plan.phys_writes.begin(),
                            {mapping.bar_gpa, PteTableWithMark(*layout, boot_mark), "arena page table and boot mark"});
    std::vector<std::uint8_t> e(8);
    std::memcpy(e.data(), &mapping.pmd_entry, 8);
    plan.phys_writes.push_back({mapping.pmd_entry_gpa, e, "arena PMD entry"});
  }
  for (std::size_t i = 0; i < record.functions.size(); ++i) {
    const LedgerFunction& lf = record.functions[i];
    const auto& now = planned.functions[i].entry.current;  // the run-pre expectation
    plan.code_writes.push_back({lf.site, {now.begin(), now.end()}, lf.trampoline, "trampoline of '" + lf.name + "'"});
  }
  if (replacing) {
    // The replaced patches' sites this patch does not take go back to the kernel's code, in the
    // same pause; their code (all of it) must be idle, as for a revert.
    plan.code_writes.insert(plan.code_writes.end(), replacing->restores.begin(), replacing->restores.end());
    plan.busy.insert(plan.busy.end(), replacing->busy.begin(), replacing->busy.end());
  }
  // The new shadow module's data run, shared by the edits of the pause (shared_overlay_words.h).
  std::shared_ptr<std::vector<std::uint8_t>> shadow_run;
  std::uint64_t shadow_run_va = 0;
  if (planned.jump_table.count != 0) {
    // The guest's own text_poke() rewrites these sites when it switches a key: it must be able
    // to walk to arena code (direct_map_alias.h).
    DirectMapAlias alias{0, 0, mode.la57, layout->base_gpa(), layout->size(), 0};
    HV_ASSIGN_OR_RETURN(ResolvedSymbol pob, kernel_.Resolve("page_offset_base", "vmlinux", 0));
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> raw, ReadKernel(pob.address, 8));
    alias.page_offset_base = ReadQ(raw);
    HV_ASSIGN_OR_RETURN(ResolvedSymbol pgd, kernel_.Resolve("init_top_pgt", "vmlinux", 0));
    alias.pgd_va = pgd.address;
    HV_ASSIGN_OR_RETURN(std::vector<PhysWrite> writes, PlanDirectMapAlias(planned.arena_after, &alias));
    plan.phys_writes.insert(plan.phys_writes.end(), writes.begin(), writes.end());
    if ((mapping.pmd_entry & vmm::pte::kDirty) == 0) {
      // Mapped by an hvpatch that did not set D: the kernel's walk refuses such a table entry.
      mapping.pmd_entry |= vmm::pte::kDirty;
      std::vector<std::uint8_t> e(8);
      std::memcpy(e.data(), &mapping.pmd_entry, 8);
      plan.phys_writes.push_back({mapping.pmd_entry_gpa, e, "arena PMD entry (with D)"});
    }
    plan.kernel_edits.push_back([alias](KernelWords& mem) {
      return LinkDirectMapAlias(mem, alias).WithContext("mapping the arena into the guest's direct map");
    });
  }
  if (planned.shadow) {
    // The module is linked where a module load links it, before its code becomes reachable. Its
    // own pages are written in the same pause (their PTEs too): the edit reads them from the plan.
    const ArenaWrite* data = nullptr;
    for (const ArenaWrite& w : planned.arena_writes) {
      if (w.memory == MemoryClass::kData && planned.shadow->module_va >= w.va &&
          planned.shadow->module_va < w.va + w.bytes.size()) {
        data = &w;
      }
    }
    if (data == nullptr) return Internal("the shadow module is not in the patch's data pages");
    shadow_run = std::make_shared<std::vector<std::uint8_t>>(data->bytes);
    shadow_run_va = data->va;
    plan.kernel_edits.push_back([l = *shadow, va = planned.shadow->module_va, run = data->va, bytes = data->bytes,
                                 shared = shadow_run, keys = planned.jump_table.enabled](KernelWords& mem) {
      *shared = bytes;  // each try of the commit starts from the plan's bytes
      SharedOverlayWords arena(mem, run, shared);
      return LinkShadowModule(arena, l, va, keys).WithContext("linking the shadow module");
    });
  }
  if (replacing) {
    // The replaced patches' shadow modules are unlinked after the trampolines (see
    // CommitPlan::final_kernel_edits: a crash before then is undone with them still linked).
    for (const std::string& name : replacing->replaced) {
      // A replaced patch's static keys may leave a tombstone in its data: DropReplaced keeps it.
      auto unlink = ShadowUnlinkEdit(name, *layout);
      if (!unlink) continue;
      if (!shadow_run) {
        plan.final_kernel_edits.push_back(std::move(*unlink));
        continue;
      }
      plan.final_kernel_edits.push_back([inner = std::move(*unlink), run = shadow_run_va, shared = shadow_run](KernelWords& mem) {
        SharedOverlayWords arena(mem, run, shared);
        return inner(arena);
      });
    }
  }

  if (request.dry_run) {
    CommitPlan check;
    check.busy = plan.busy;
    Committer committer(vm_, stacks_, {1, std::chrono::milliseconds(0)});
    HV_ASSIGN_OR_RETURN(result.commit, committer.Commit(check));
    return result;
  }

  // Write-ahead: the record (with every original byte) and the arena state before any write.
  mapping.layout = planned.arena_after.Serialize();
  const ArenaMapping previous_mapping = ledger.arena;
  const std::uint64_t previous_mark = ledger.boot_mark;
  ledger.arena = mapping;
  ledger.boot_mark = boot_mark;
  ledger.patches.push_back(record);
  bool wrote = false;
  auto committed = CommitWithLedger(ledger, plan, request.retry, &wrote);
  if (!committed.ok() && wrote) {
    // The guest may hold some or all of the patch (a write or the resume failed, e.g. QEMU
    // closed the connection): keep the record as 'applying', so the next run's recovery reads
    // the guest and finishes or undoes it. Dropping it here could lose live trampolines.
    Status saved = store_.Save(ledger);
    return committed.status().WithHint(
        saved.ok() ? "the ledger keeps patch '" + module.name() +
                         "' as applying: the next hvpatch command on this VM (e.g. list) finds it fully applied or undoes it"
                   : "the ledger could not be updated either (" + saved.message() + ")");
  }
  if (!committed.ok()) {
    ledger.patches.pop_back();
    ledger.arena = previous_mapping;
    ledger.boot_mark = previous_mark;
    Status saved = store_.Save(ledger);
    if (!saved.ok()) return committed.status().WithContext("(ledger not updated: " + saved.message() + ")");
    return committed.status();
  }
  result.commit = *committed;
  ledger.patches.back().state = PatchState::kApplied;
  ledger.arena.committed = true;
  if (replacing) HV_RETURN_IF_ERROR(DropReplaced(ledger, ledger.patches.back()));
  HV_RETURN_IF_ERROR(store_.Save(ledger).WithContext("writing the ledger"));
  if (hook_) hook_("applied");

  if (agent_) {
    auto confirmed = agent_->Confirm(ledger.patches.back());
    if (confirmed.ok() && *confirmed) {
      result.confirmed = true;
      result.confirmation = "agent";
      (void)agent_->Publish(ledger);
    } else if (confirmed.ok() || confirmed.status().code() == Code::kInvalidArgument) {
      // The guest says the patch is not live (or answers nonsense): undo it rather than leave
      // a doubt. An agent that is merely absent or silent leaves `confirmed: false`.
      const std::string why = confirmed.ok() ? "the agent did not see the trampolines" : confirmed.status().message();
      auto reverted = Revert({module.name(), request.retry});
      return FailedPrecondition("confirmation failed (" + why + "); patch '" + module.name() + "' " +
                                (reverted.ok() ? "was reverted" : "could NOT be reverted: " + reverted.status().message()));
    } else {
      result.confirmation = confirmed.status().message();
    }
  } else {
    result.confirmation = "no agent";
  }
  return result;
}

Result<RevertResult> PatchEngine::Revert(const RevertRequest& request) {
  HV_ASSIGN_OR_RETURN(Ledger ledger, LoadLedger());
  LedgerPatch* patch = ledger.Find(request.name);
  if (!patch) {
    if (const LedgerPatch* by = ledger.ReplacedBy(request.name)) {
      return NotFound("patch '" + request.name + "' was replaced by '" + by->name + "' (atomic replace) on " +
                      vm_.Describe() + ": its functions are '" + by->name + "''s or the kernel's own again")
          .WithHint("revert '" + by->name + "' to get the original kernel back");
    }
    // Live in an earlier boot, gone with it: the wanted end state holds, and nothing is written.
    for (auto a = ledger.archived.rbegin(); a != ledger.archived.rend(); ++a) {
      if (std::find(a->patches.begin(), a->patches.end(), request.name) != a->patches.end()) {
        RevertResult gone;
        gone.name = request.name;
        gone.gone_with_boot = "ledger archived as '" + a->path + "': " + a->reason;
        return gone;
      }
    }
    return NotFound("patch '" + request.name + "' is not applied to " + vm_.Describe());
  }
  for (const auto& f : patch->functions) {
    const LedgerPatch* top = ledger.TopAt(f.site);
    if (top && top->name != patch->name) {
      return FailedPrecondition("patch '" + top->name + "' is stacked on '" + patch->name + "' (function '" +
                                f.name + "'): revert '" + top->name + "' first");
    }
  }
  auto layout = ArenaLayout::Deserialize(ledger.arena.layout);
  if (!layout.ok()) return layout.status().WithContext("ledger '" + store_.Describe() + "'");

  RevertResult result;
  result.name = patch->name;
  CommitPlan plan;
  for (const auto& a : layout->allocations()) {
    if (a.owner == patch->name && a.memory == MemoryClass::kCode) {
      plan.busy.push_back({layout->Va(a.offset()), layout->Va(a.offset()) + a.size(), "code of '" + patch->name + "'"});
    }
  }
  for (const auto& f : patch->functions) {
    plan.code_writes.push_back({f.site, f.trampoline, f.original, "original entry of '" + f.name + "'"});
    result.functions.push_back(f.name);
  }
  if (auto unlink = ShadowUnlinkEdit(patch->name, *layout)) plan.kernel_edits.push_back(std::move(*unlink));
  patch->state = PatchState::kReverting;
  bool wrote = false;
  auto committed = CommitWithLedger(ledger, plan, request.retry, &wrote);
  patch = ledger.Find(request.name);
  if (!committed.ok() && wrote) {
    // As in Apply: the record stays 'reverting' for the next run's recovery.
    Status saved = store_.Save(ledger);
    return committed.status().WithHint(
        saved.ok() ? "the ledger keeps patch '" + request.name +
                         "' as reverting: the next hvpatch command on this VM (e.g. list) finds it still applied or finishes the revert"
                   : "the ledger could not be updated either (" + saved.message() + ")");
  }
  if (!committed.ok()) {
    patch->state = PatchState::kApplied;
    (void)store_.Save(ledger);
    return committed.status();
  }
  result.commit = *committed;
  HV_RETURN_IF_ERROR(FreePatchRuns(*layout, request.name));
  ledger.arena.layout = layout->Serialize();
  ledger.patches.erase(ledger.patches.begin() + (patch - ledger.patches.data()));
  HV_RETURN_IF_ERROR(store_.Save(ledger).WithContext("writing the ledger"));
  if (agent_) (void)agent_->Publish(ledger);
  return result;
}

Result<std::vector<ListedPatch>> PatchEngine::List() {
  HV_ASSIGN_OR_RETURN(Ledger ledger, LoadLedger());
  std::vector<ListedPatch> out;
  for (const auto& p : ledger.patches) {
    ListedPatch lp{p, {}, true};
    for (const auto& f : p.functions) {
      HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> now, ReadKernel(f.site, 5));
      const bool holds = SiteHolds(now, f.trampoline);
      lp.sites.push_back({f.name, f.site, holds});
      const LedgerPatch* top = ledger.TopAt(f.site);
      if (top == &p && !holds) lp.consistent = false;
    }
    out.push_back(std::move(lp));
  }
  return out;
}

Status PatchEngine::ResumeAfterCrash(Ledger& ledger, std::vector<std::string>& notes) {
  if (!ledger.paused_by_hvpatch) return Status::Ok();
  HV_ASSIGN_OR_RETURN(bool running, vm_.Running());
  if (!running && ledger.was_running) {
    // A dead hvpatch left the VM paused: take the pause over and release it.
    HV_RETURN_IF_ERROR(vm_.Pause());
    HV_RETURN_IF_ERROR(vm_.ForceResume());
    notes.push_back("resumed the VM that an interrupted hvpatch left paused");
  }
  ledger.paused_by_hvpatch = false;
  return store_.Save(ledger);
}

Status PatchEngine::FreePatchRuns(ArenaLayout& layout, const std::string& name) {
  // A static key tombstone (static_keys.h) in the patch's data keeps that data allocated for
  // good. Decided from the arena's bytes, not from the unlink that wrote it: a crash recovery
  // that finds the module already unlinked must decide the same.
  const KernelBtf* btf = kernel_.Btf();
  auto shadow = btf != nullptr ? ShadowModuleLayout::Read(*btf, kernel_) : Result<ShadowModuleLayout>(NotFound("no BTF"));
  if (shadow.ok() && shadow->keys.node_size != 0) {
    VmKernelWords mem(vm_, kernel_.KernelPaging());
    bool keep = false;
    for (const auto& a : layout.allocations()) {
      if (a.owner != name || a.memory != MemoryClass::kData) continue;
      auto held = HoldsKeyTombstone(mem, *shadow, layout.Va(a.offset()), layout.Va(a.offset()) + a.size());
      // Unreadable through the guest's page tables (e.g. an apply killed before its PTE writes):
      // then the guest never reached it either, so it cannot hold a node of the guest's lists.
      keep = keep || (held.ok() && *held);
    }
    if (keep) HV_RETURN_IF_ERROR(layout.Transfer(name, MemoryClass::kData, kStaticKeyKeeper));
  }
  return layout.Free(name);
}

Status PatchEngine::DropReplaced(Ledger& ledger, const LedgerPatch& by) {
  const std::vector<std::string> names = by.replaces;  // `by` lives in ledger.patches
  auto layout = ArenaLayout::Deserialize(ledger.arena.layout);
  if (!layout.ok()) return layout.status().WithContext("ledger '" + store_.Describe() + "'");
  for (const std::string& name : names) {
    (void)FreePatchRuns(*layout, name);  // kNotFound: it had no pages (nothing to free)
    std::erase_if(ledger.patches, [&](const LedgerPatch& p) { return p.name == name; });
  }
  ledger.arena.layout = layout->Serialize();
  return Status::Ok();
}

Status PatchEngine::RecoverReplace(Ledger& ledger, std::size_t index, std::vector<std::string>& notes) {
  const LedgerPatch p = ledger.patches[index];
  const std::string who = "recovering the atomic replace by patch '" + p.name + "'";
  std::vector<LedgerPatch> below;
  for (const std::string& name : p.replaces) {
    const LedgerPatch* r = ledger.Find(name);
    if (r == nullptr) {
      return FailedPrecondition(who + ": the replaced patch '" + name + "' is not in the ledger")
          .WithHint("the ledger '" + store_.Describe() + "' was edited or is damaged");
    }
    below.push_back(*r);
  }
  auto layout = ArenaLayout::Deserialize(ledger.arena.layout);
  if (!layout.ok()) return layout.status().WithContext("ledger '" + store_.Describe() + "'");
  std::vector<std::uint64_t> sites;
  for (const auto& f : p.functions) sites.push_back(f.site);
  auto planned = PlanAtomicReplace(below, *layout, sites);
  if (!planned.ok()) return planned.status().WithContext(who);
  const AtomicReplacePlan& rp = *planned;

  // The end state is: every site of the new patch holds its trampoline, every other site of the
  // replaced patches the kernel's entry. Anything short of it is undone.
  bool finished = true;
  CommitPlan undo;
  for (const auto& f : p.functions) {
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> now, ReadKernel(f.site, 5));
    if (!SiteHolds(now, f.trampoline)) {
      finished = false;
      continue;
    }
    const auto before = rp.current.count(f.site) != 0 ? rp.current.at(f.site) : f.original;
    undo.code_writes.push_back({f.site, f.trampoline, before, "entry of '" + f.name + "' before the replace"});
    undo.busy.push_back({f.new_addr, f.new_addr + std::max<std::uint64_t>(f.new_size, 1), p.name + ":" + f.name});
  }
  for (std::size_t k = 0; k < rp.restores.size(); ++k) {
    const CodeWrite& r = rp.restores[k];
    HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> now, ReadKernel(r.va, 5));
    if (!SiteHolds(now, r.bytes)) {
      finished = false;
      continue;
    }
    undo.code_writes.push_back({r.va, r.bytes, r.expected, "trampoline of '" + rp.restored_functions[k] + "' back"});
    undo.busy.push_back(rp.restored_code[k]);
  }
  std::string names;
  for (const auto& n : p.replaces) names += std::string(names.empty() ? "" : ", ") + "'" + n + "'";

  if (finished) {
    // Every code write was done; only the replaced shadow modules' unlinks (written last) may
    // be missing. They are idempotent: a module no longer linked is not found.
    CommitPlan finish;
    for (const std::string& name : p.replaces) {
      if (auto unlink = ShadowUnlinkEdit(name, *layout)) finish.final_kernel_edits.push_back(std::move(*unlink));
    }
    if (!finish.final_kernel_edits.empty()) {
      Committer committer(vm_, stacks_, {5, std::chrono::milliseconds(1000)});
      auto r = committer.Commit(finish);
      if (!r.ok()) return r.status().WithContext(who);
    }
    ledger.patches[index].state = PatchState::kApplied;
    ledger.arena.committed = true;
    HV_RETURN_IF_ERROR(DropReplaced(ledger, ledger.patches[index]));
    notes.push_back("recovered patch '" + p.name + "' interrupted while applying: fully applied (replaced " + names + ")");
    return store_.Save(ledger);
  }
  // Undo: the replaced patches' trampolines back, the new patch's module unlinked (theirs were
  // never unlinked: that comes after the last code write), its pages freed.
  if (auto unlink = ShadowUnlinkEdit(p.name, *layout)) undo.kernel_edits.push_back(std::move(*unlink));
  if (!undo.code_writes.empty() || !undo.kernel_edits.empty()) {
    Committer committer(vm_, stacks_, {5, std::chrono::milliseconds(1000)});
    auto r = committer.Commit(undo);
    if (!r.ok()) return r.status().WithContext(who);
  }
  if (FreePatchRuns(*layout, p.name).ok()) ledger.arena.layout = layout->Serialize();
  ledger.patches.erase(ledger.patches.begin() + static_cast<std::ptrdiff_t>(index));
  notes.push_back("recovered patch '" + p.name + "' interrupted while applying: fully reverted (" + names +
                  " kept)");
  return store_.Save(ledger);
}

Result<std::vector<std::string>> PatchEngine::Recover() {
  HV_ASSIGN_OR_RETURN(Ledger ledger, LoadLedger());
  // A ledger of another boot was archived by LoadLedger: its notes come first.
  std::vector<std::string> notes = std::move(boot_notes_);
  boot_notes_.clear();
  if (ledger.patches.empty() && !ledger.paused_by_hvpatch) return notes;

  for (std::size_t i = 0; i < ledger.patches.size(); ++i) {
    LedgerPatch& p = ledger.patches[i];
    if (p.state == PatchState::kApplied) continue;
    if (p.state == PatchState::kApplying && !p.replaces.empty()) {
      // It may drop records below it: look at the ledger again from the start.
      HV_RETURN_IF_ERROR(RecoverReplace(ledger, i, notes));
      i = static_cast<std::size_t>(-1);
      continue;
    }
    std::size_t switched = 0;
    CommitPlan undo;
    for (const auto& f : p.functions) {
      HV_ASSIGN_OR_RETURN(std::vector<std::uint8_t> now, ReadKernel(f.site, 5));
      if (SiteHolds(now, f.trampoline)) {
        ++switched;
        undo.code_writes.push_back({f.site, f.trampoline, f.original, "original entry of '" + f.name + "'"});
        undo.busy.push_back({f.new_addr, f.new_addr + std::max<std::uint64_t>(f.new_size, 1), f.name});
      }
    }
    const bool was_applying = p.state == PatchState::kApplying;
    if (was_applying && switched == p.functions.size()) {
      p.state = PatchState::kApplied;
      ledger.arena.committed = true;
      notes.push_back("recovered patch '" + p.name + "' interrupted while applying: fully applied");
      HV_RETURN_IF_ERROR(store_.Save(ledger));
      continue;
    }
    if (!was_applying && switched == p.functions.size()) {
      p.state = PatchState::kApplied;
      notes.push_back("recovered patch '" + p.name + "' interrupted while reverting: still fully applied");
      HV_RETURN_IF_ERROR(store_.Save(ledger));
      continue;
    }
    auto layout = ArenaLayout::Deserialize(ledger.arena.layout);
    // A link made in the interrupted pause goes too (nothing to do when there is none).
    if (layout.ok()) {
      if (auto unlink = ShadowUnlinkEdit(p.name, *layout)) undo.kernel_edits.push_back(std::move(*unlink));
    }
    if (!undo.code_writes.empty() || !undo.kernel_edits.empty()) {
      // Partly switched: put the rest back, with the same stack check as a revert.
      Committer committer(vm_, stacks_, {5, std::chrono::milliseconds(1000)});
      auto r = committer.Commit(undo);
      if (!r.ok()) return r.status().WithContext("recovering patch '" + p.name + "'");
    }
    if (layout.ok() && FreePatchRuns(*layout, p.name).ok()) ledger.arena.layout = layout->Serialize();
    notes.push_back("recovered patch '" + p.name + "' interrupted while " +
                    (was_applying ? "applying" : "reverting") + ": fully reverted");
    ledger.patches.erase(ledger.patches.begin() + static_cast<long>(i));
    --i;
    HV_RETURN_IF_ERROR(store_.Save(ledger));
  }
  if (ledger.arena.mapped && !ledger.arena.committed) {
    // A first apply that died after writing the PMD entry: the mapping is this boot's now.
    std::vector<std::uint8_t> raw(8);
    if (vm_.ReadPhys(ledger.arena.pmd_entry_gpa, raw).ok() && ReadQ(raw) == ledger.arena.pmd_entry) {
      ledger.arena.committed = true;
      HV_RETURN_IF_ERROR(store_.Save(ledger));
    }
  }
  HV_RETURN_IF_ERROR(ResumeAfterCrash(ledger, notes));
  return notes;
}

}  // namespace hv::patcher
