#include "patcher/guest_kernel.h"

#include <algorithm>
#include <atomic>
#include <chrono>

#include "base/hex.h"
#include "patcher/kallsyms_decoder.h"

namespace hv::patcher {
namespace {

constexpr int kMaxStackHops = 4;

// Milliseconds since `*mark`, which moves to now.
double Lap(std::chrono::steady_clock::time_point* mark) {
  const auto now = std::chrono::steady_clock::now();
  const double ms = std::chrono::duration<double, std::milli>(now - *mark).count();
  *mark = now;
  return ms;
}

Result<std::uint64_t> SymbolValue(const SymbolTable& table, std::string_view name) {
  HV_ASSIGN_OR_RETURN(KernelSymbol s, table.Find("", name, 0));
  return s.address;
}

// The paging root: init_top_pgt through the kernel's __pa_symbol arithmetic, else vCPU 0's CR3.
Result<vmm::PagingMode> PagingRoot(const Vmcoreinfo& info, std::span<const vmm::VcpuState> vcpus) {
  vmm::PagingMode mode;
  auto pgt = info.Symbol("init_top_pgt");
  auto phys_base = info.Number("phys_base");
  if (pgt && phys_base && *pgt >= kStartKernelMap) {
    mode.cr3 = *pgt - kStartKernelMap + static_cast<std::uint64_t>(*phys_base);
    mode.la57 = info.Number("pgtable_l5_enabled").value_or(0) == 1;
    return mode;
  }
  if (vcpus.empty()) {
    return NotFound("vmcoreinfo has no init_top_pgt and phys_base, and no vCPU state was given");
  }
  mode.cr3 = vcpus.front().cr3 & vmm::pte::kAddrMask;
  mode.la57 = vcpus.front().la57();
  mode.nxe = (vcpus.front().efer >> 11) & 1;
  return mode;
}

}  // namespace

Result<std::unique_ptr<GuestKernel>> GuestKernel::Build(const vmm::GuestPhysMemory& mem,
                                                        std::span<const vmm::VcpuState> vcpus,
                                                        const GuestKernelOptions& options) {
  std::unique_ptr<GuestKernel> k(new GuestKernel());
  const auto start = std::chrono::steady_clock::now();
  auto mark = start;
  // The hint saves a pass over guest RAM; only a copy the vCPUs' page tables confirm is used.
  Result<Vmcoreinfo> info = NotFound("no hint");
  k->vmcoreinfo_source_ = "scan";
  if (options.vmcoreinfo_hint) {
    info = Vmcoreinfo::ReadAt(mem, *options.vmcoreinfo_hint, vcpus);
    if (info.ok()) {
      k->vmcoreinfo_source_ = "hint";
    } else {
      k->vmcoreinfo_source_ = "scan (hint " + Hex(*options.vmcoreinfo_hint) + " rejected: " +
                              info.status().message() + ")";
    }
  }
  if (!info.ok()) info = Vmcoreinfo::Find(mem, vcpus);
  if (!info.ok()) return info.status().WithContext("finding vmcoreinfo");
  k->vmcoreinfo_ = std::move(*info);
  Result<vmm::PagingMode> mode = PagingRoot(k->vmcoreinfo_, vcpus);
  if (!mode.ok()) return mode.status().WithContext("finding the kernel page tables");
  k->paging_ = *mode;
  const KernelMemory kmem(mem, k->paging_);
  k->timings_.vmcoreinfo_ms = Lap(&mark);

  // vmlinux symbols: kallsyms from memory (a table of their own, which the warm-start cache
  // holds), else the fallbacks. The modules' symbols join later as a second segment.
  auto value_of = [&](std::string_view name) { return SymbolValue(k->symbols_, name); };
  Status decoded = [&]() -> Status {
    HV_ASSIGN_OR_RETURN(KallsymsLocation where, KallsymsDecoder::Locate(k->vmcoreinfo_));
    // The warm start: an entry decoded from the very same tables (see kallsyms_cache.h), checked
    // by a digest of the tables streamed from guest memory (not copied: only a miss decodes).
    std::uint64_t digest = 0;
    if (options.cache) {
      HV_ASSIGN_OR_RETURN(digest, KallsymsDecoder::DigestInPlace(kmem, where));
    }
    const KallsymsCacheKey key{k->vmcoreinfo_.build_id(), k->vmcoreinfo_.kernel_offset(), digest};
    const std::string store_key = options.cache ? key.StoreKey() : "";
    SymbolTable vmlinux;
    bool save = false;
    if (options.cache) {
      Result<SymbolTable> cached = NotFound("the build-id is not a usable cache key");
      if (!store_key.empty()) {
        auto entry = options.cache->Map(store_key);
        cached = entry.ok() ? DecodeKallsymsCache((*entry)->bytes(), *entry, key)
                            : Result<SymbolTable>(entry.status());
      }
      if (cached.ok()) {
        vmlinux = std::move(*cached);
        k->symbol_cache_ = "hit";
      } else {
        k->symbol_cache_ = "miss: " + cached.status().message();
        save = !store_key.empty();
      }
    }
    if (vmlinux.size() == 0) {
      HV_ASSIGN_OR_RETURN(KallsymsRaw raw, KallsymsDecoder::ReadRaw(kmem, where));
      // The tables read for the decode are the ones the entry saved below is keyed by.
      if (options.cache && raw.Digest() != digest) return Unavailable("kallsyms tables changed while read");
      HV_ASSIGN_OR_RETURN(SymbolList list, KallsymsDecoder::Decode(raw.tables()));
      if (list.empty()) return InvalidArgument("kallsyms holds no symbols");
      HV_RETURN_IF_ERROR(vmlinux.AddObject("", std::move(list)));
    }
    // A sanity check that ties the tables to this kernel (and the KASLR offset to both).
    if (auto stext = k->vmcoreinfo_.Symbol("_stext")) {
      HV_ASSIGN_OR_RETURN(std::uint64_t decoded_stext, SymbolValue(vmlinux, "_stext"));
      if (decoded_stext != *stext) {
        return InvalidArgument("kallsyms puts _stext at " + Hex(decoded_stext) +
                               " but vmcoreinfo says " + Hex(*stext));
      }
    }
    if (save) {
      // Best effort: a read-only state directory only costs the next run a decode.
      Result<std::string> bytes = EncodeKallsymsCache(key, vmlinux);
      Status saved = bytes.ok() ? options.cache->Save(store_key, *bytes) : bytes.status();
      if (!saved.ok()) k->symbol_cache_ += " (not saved: " + saved.message() + ")";
    }
    k->symbols_ = std::move(vmlinux);
    k->symbol_source_ = "guest memory (kallsyms)";
    return Status::Ok();
  }();
  if (!decoded.ok()) {
    if (!options.agent_kallsyms.empty()) {
      Result<SymbolTable> t = ParseKallsymsText(options.agent_kallsyms);
      if (!t.ok()) return t.status().WithContext("parsing the agent's kallsyms");
      k->symbols_ = std::move(*t);
      k->symbol_source_ = "agent kallsyms";
    } else if (!options.system_map.empty()) {
      Result<SymbolTable> t = ParseSystemMap(
          options.system_map, options.kaslr_offset.value_or(k->vmcoreinfo_.kernel_offset()));
      if (!t.ok()) return t.status().WithContext("parsing System.map");
      k->symbols_ = std::move(*t);
      k->symbol_source_ = "System.map";
    } else {
      return decoded.WithContext("decoding kallsyms")
          .WithHint("give the agent's kallsyms or a System.map for this kernel build");
    }
  }
  if (auto end = value_of("__per_cpu_end"); end.ok()) k->per_cpu_end_ = *end;
  k->timings_.kallsyms_ms = Lap(&mark);

  // BTF: the answers an earlier run recorded for this kernel build (btf_answers.h), else read
  // and parsed (and its answers recorded for the next run).
  {
    auto start = value_of("__start_BTF");
    auto stop = value_of("__stop_BTF");
    if (!start.ok()) return start.status().WithContext("reading BTF");
    if (!stop.ok()) return stop.status().WithContext("reading BTF");
    // A range Read refuses is never looked up: the warm start fails where the cold one does.
    const bool range_ok = *stop > *start && *stop - *start <= KernelBtf::kMaxBlobBytes;
    k->btf_key_ = {k->vmcoreinfo_.build_id(), range_ok ? *stop - *start : 0};
    const std::string store_key = options.cache && range_ok ? k->btf_key_.StoreKey() : "";
    if (options.cache && range_ok) {
      Result<BtfAnswers> cached = NotFound("the build-id is not a usable cache key");
      if (!store_key.empty()) {
        Result<std::string> bytes = options.cache->Load(store_key);
        cached = bytes.ok() ? DecodeBtfAnswers(*bytes, k->btf_key_) : Result<BtfAnswers>(bytes.status());
      }
      if (cached.ok()) {
        const vmm::GuestPhysMemory* later = options.memory_after_build ? options.memory_after_build : &mem;
        k->btf_.emplace(KernelBtf::FromAnswers(
            std::move(*cached), [later, paging = k->paging_, start = *start, stop = *stop]() {
              return KernelBtf::Read(KernelMemory(*later, paging), start, stop);
            }));
        k->btf_cache_ = "hit";
      } else {
        k->btf_cache_ = "miss: " + cached.status().message();
      }
    }
    if (!k->btf_) {
      Result<KernelBtf> btf = KernelBtf::Read(kmem, *start, *stop);
      if (!btf.ok()) return btf.status().WithContext("reading BTF");
      k->btf_.emplace(std::move(*btf));
      if (!store_key.empty()) k->btf_->Record();
    }
  }
  k->timings_.btf_ms = Lap(&mark);

  // Modules: their symbols join the table unless the agent's text already had them.
  {
    Result<ModuleLayout> layout = ModuleLayout::FromBtf(*k->btf_);
    if (!layout.ok()) return layout.status().WithContext("reading modules");
    Result<std::uint64_t> head = value_of("modules");
    if (!head.ok()) return head.status().WithContext("reading modules");
    Result<std::vector<GuestModule>> mods = ModuleReader(*layout).Read(kmem, *head);
    if (!mods.ok()) return mods.status().WithContext("reading modules");
    k->modules_ = std::move(*mods);
    std::vector<SymbolTable::ObjectSymbols> batch;
    if (k->symbols_.modules().empty()) {
      for (const GuestModule& m : k->modules_) {
        std::optional<std::uint64_t> end;
        if (m.core_size) end = m.core_base + m.core_size;
        batch.push_back({m.name, m.symbols, end});
      }
    }
    Status s = k->symbols_.AddObjects(std::move(batch));
    if (!s.ok()) return s.WithContext("reading modules");
  }
  k->timings_.modules_ms = Lap(&mark);

  // Tasks.
  {
    Result<TaskLayout> layout = TaskLayout::FromBtf(*k->btf_, k->symbols_);
    if (!layout.ok()) return layout.status().WithContext("walking tasks");
    Result<TaskAnchors> anchors = TaskAnchors::FromSymbols(k->symbols_);
    if (!anchors.ok()) return anchors.status().WithContext("walking tasks");
    // nr_cpu_ids for the summary even when the walk is skipped (a running guest).
    if (Result<std::uint32_t> n = kmem.ReadU32(anchors->nr_cpu_ids);
        n.ok() && *n > 0 && *n <= TaskWalker::kMaxCpus) {
      k->nr_cpus_ = static_cast<int>(*n);
    }
    k->walker_.emplace(std::move(*layout), std::move(*anchors));
    if (options.walk_tasks) {
      Result<TaskSnapshot> snap = k->walker_->Walk(kmem);
      if (!snap.ok()) return snap.status().WithContext("walking tasks");
      k->initial_tasks_ = std::move(*snap);
    }
  }
  k->timings_.tasks_ms = Lap(&mark);
  if (options.cache) {
    // Best effort, like the kallsyms entry: a read-only state directory costs the next run a parse.
    Status saved = k->SaveBtfAnswers(*options.cache);
    if (!saved.ok()) k->btf_cache_ += " (not saved: " + saved.message() + ")";
  }
  k->timings_.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return k;
}

Result<ResolvedSymbol> GuestKernel::Resolve(std::string_view name, std::string_view object,
                                            std::uint64_t sympos) const {
  auto to_resolved = [&](const KernelSymbol& sym) {
    const KernelSymbol* s = &sym;
    ResolvedSymbol r;
    r.address = s->address;
    r.size = s->size;
    r.per_cpu = s->module.empty() && per_cpu_end_ && s->address < per_cpu_end_;
    return r;
  };
  if (sympos > std::numeric_limits<std::uint32_t>::max()) {
    return NotFound("symbol position " + std::to_string(sympos) + " for symbol '" +
                    std::string(name) + "' not found");
  }
  const auto pos = static_cast<std::uint32_t>(sympos);
  if (!object.empty()) {
    const std::string_view module = object == "vmlinux" ? std::string_view() : object;
    HV_ASSIGN_OR_RETURN(KernelSymbol s, symbols_.Find(module, name, pos));
    return to_resolved(s);
  }
  Result<KernelSymbol> s = symbols_.Find("", name, pos);
  if (s.ok()) return to_resolved(*s);
  if (s.status().code() != Code::kNotFound) return s.status();
  for (const std::string& m : symbols_.modules()) {
    Result<KernelSymbol> in_module = symbols_.Find(m, name, pos);
    if (in_module.ok()) return to_resolved(*in_module);
    if (in_module.status().code() != Code::kNotFound) return in_module.status();
  }
  return NotFound("symbol '" + std::string(name) + "' not found in vmlinux or any loaded module");
}

Result<TaskSnapshot> GuestKernel::WalkTasks(const vmm::GuestPhysMemory& mem, const TaskSnapshot* hint) const {
  const KernelMemory kmem(mem, paging_);
  Result<TaskSnapshot> snap = walker_->Walk(kmem, hint);
  if (!snap.ok()) return snap.status().WithContext("walking tasks");
  return snap;
}

Result<std::vector<StackRegion>> GuestKernel::StackRegions(const vmm::GuestPhysMemory& mem,
                                                           std::span<const vmm::VcpuState> vcpus,
                                                           const TaskSnapshot* hint, TaskSnapshot* walked) const {
  const KernelMemory kmem(mem, paging_);
  HV_ASSIGN_OR_RETURN(TaskSnapshot snap, WalkTasks(mem, hint));
  std::vector<StackRegion> out;
  std::vector<std::uint64_t> running;  // task_structs handled through a vCPU

  for (const vmm::VcpuState& vcpu : vcpus) {
    const int cpu = TaskWalker::CpuOfVcpu(snap, vcpu);
    if (cpu < 0) {
      return InvalidArgument("vCPU " + std::to_string(vcpu.index) + " matches no guest CPU");
    }
    const CpuView& view = snap.cpus[static_cast<std::size_t>(cpu)];
    running.push_back(view.current_task);
    StackRegion base;
    if (const GuestTask* t = snap.FindTask(view.current_task)) {
      base.pid = t->pid;
      base.tid = t->tid;
      base.comm = t->comm;
    }
    if (!vcpu.in_kernel()) continue;  // user mode: no live kernel frames
    auto range_of = [&](std::uint64_t sp) -> const StackRange* {
      for (const StackRange& r : view.stacks) {
        if (sp >= r.begin && sp < r.end) return &r;
      }
      return nullptr;
    };
    std::uint64_t sp = vcpu.rsp;
    const StackRange* r = range_of(sp);
    if (!r) {
      // Mid context switch, RSP is already on the next task's stack while current_task still
      // names the previous one: scan that stack from RSP too.
      for (const GuestTask& t : snap.tasks) {
        if (t.stack_base && sp >= t.stack_base && sp < t.stack_base + t.stack_size) {
          StackRegion reg = base;
          reg.pid = t.pid;
          reg.tid = t.tid;
          reg.comm = t.comm;
          reg.begin = sp & ~7ull;
          reg.end = t.stack_base + t.stack_size;
          reg.kind = "vCPU " + std::to_string(vcpu.index) + " switching task";
          out.push_back(std::move(reg));
          break;
        }
      }
      for (const StackRange& whole : view.stacks) {
        if (whole.kind == "task" || whole.kind == "irq") {
          StackRegion reg = base;
          reg.begin = whole.begin;
          reg.end = whole.end;
          reg.kind = "vCPU " + std::to_string(vcpu.index) + " " + whole.kind + " (whole)";
          out.push_back(std::move(reg));
        }
      }
      continue;
    }
    for (int hop = 0; r && hop < kMaxStackHops; ++hop) {
      StackRegion reg = base;
      reg.begin = sp & ~7ull;
      reg.end = r->end;
      reg.kind = "vCPU " + std::to_string(vcpu.index) + " " + r->kind;
      out.push_back(std::move(reg));
      if (r->kind == "task") break;
      // Where the interrupted context's stack pointer is saved.
      const std::uint64_t slot = r->kind == "irq" ? r->end - 8 : r->end - 16;
      Result<std::uint64_t> prev = kmem.ReadU64(slot);
      if (!prev.ok()) {
        return FailedPrecondition("vCPU " + std::to_string(vcpu.index) + ": " +
                                  prev.status().message());
      }
      sp = *prev;
      const StackRange* next = range_of(sp);
      r = next == r ? nullptr : next;
    }
  }

  for (const GuestTask& t : snap.tasks) {
    if (!t.stack_base) continue;  // an exited task whose stack is already freed
    if (std::find(running.begin(), running.end(), t.task) != running.end()) continue;
    StackRegion reg;
    reg.pid = t.pid;
    reg.tid = t.tid;
    reg.comm = t.comm;
    const std::uint64_t end = t.stack_base + t.stack_size;
    // thread.sp is only written when a task leaves a CPU: a task marked on_cpu that no vCPU
    // shows as current is being switched in or out, and frames below its saved SP may be live.
    const bool saved_sp_valid = !t.on_cpu && t.saved_sp >= t.stack_base && t.saved_sp < end;
    reg.begin = saved_sp_valid ? t.saved_sp : t.stack_base;
    reg.end = end;
    reg.kind = t.idle ? "idle task stack" : "task stack";
    out.push_back(std::move(reg));
  }
  if (walked != nullptr) *walked = std::move(snap);
  return out;
}

Status GuestKernel::SaveBtfAnswers(KernelCacheStore& store) {
  if (!btf_ || !btf_->HasUnsavedAnswers()) return Status::Ok();
  const std::string key = btf_key_.StoreKey();
  if (key.empty()) return Status::Ok();  // not recording: Build found no usable key
  const KernelBtf::Recorded recorded = btf_->recorded();
  const std::string bytes = EncodeBtfAnswers(btf_key_, recorded.answers);
  if (bytes.size() > kMaxBtfAnswersBytes) {
    return InvalidArgument("BTF answers entry of " + std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                           std::to_string(kMaxBtfAnswersBytes));
  }
  HV_RETURN_IF_ERROR(store.Save(key, bytes));
  btf_->MarkSaved(recorded.generation);
  return Status::Ok();
}

GuestKernelSummary GuestKernel::Summary() const {
  GuestKernelSummary s;
  s.release = release();
  s.build_id = build_id();
  s.kaslr_offset = kaslr_offset();
  s.symbols = symbols_.size();
  s.vmlinux_symbols = symbols_.CountIn("");
  s.symbol_source = symbol_source_;
  s.symbol_cache = symbol_cache_;
  s.btf_cache = btf_cache_;
  s.modules = symbols_.modules();
  s.cpus = initial_tasks_.cpus.empty() ? nr_cpus_ : static_cast<int>(initial_tasks_.cpus.size());
  s.tasks = initial_tasks_.tasks.size();
  s.vmcoreinfo_gpa = vmcoreinfo_.found_at();
  s.vmcoreinfo_source = vmcoreinfo_source_;
  s.thread_size = walker_ ? walker_->layout().thread_size : 0;
  return s;
}

void GuestKernelStacks::Prepare() {
  hint_.reset();
  hint_regions_.clear();
  hint_by_begin_.clear();
  if (!mem_.ReadsFromMapping()) return;
  TaskSnapshot walked;
  Result<std::vector<StackRegion>> regions = kernel_.StackRegions(mem_, {}, nullptr, &walked);
  if (!regions.ok()) return;
  hint_ = std::move(walked);
  // The stack check itself with nothing to look for: it touches exactly what the pause will.
  // (It stops at a stack it cannot read, which a running guest may show mid-update; the
  // warm-up is then partial, never wrong.)
  std::erase_if(*regions, [](const StackRegion& r) {
    return r.begin == 0 || r.begin > r.end || r.end - r.begin > kMaxStackRegion;
  });
  (void)CheckStacks(mem_, kernel_.paging(), {}, *regions, {});
  hint_regions_ = std::move(*regions);
  hint_by_begin_.reserve(hint_regions_.size());
  for (std::size_t i = 0; i < hint_regions_.size(); ++i) hint_by_begin_.emplace(hint_regions_[i].begin, i);
  if (!helper_ && hint_regions_.size() >= min_shared_) helper_ = std::make_unique<HelperThread>();
}

Result<StackCheckReport> GuestKernelStacks::Check(const vmm::GuestPhysMemory& mem, const vmm::PagingMode& mode,
                                                  std::span<const vmm::VcpuState> vcpus,
                                                  std::span<const CodeRange> busy, std::uint64_t& collect_us) {
  if (!hint_ || !helper_ || hint_regions_.size() < min_shared_) {
    return StackSource::Check(mem, mode, vcpus, busy, collect_us);
  }
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const std::size_t n = hint_regions_.size();
  // Per predicted region: 0 not scanned (or unreadable: left to the serial scan), 1 clean,
  // 2 with hits (in `found`, tagged with the region's index). Each entry is written by the one
  // thread that claimed its chunk and read after Wait().
  std::vector<std::uint8_t> state(n, 0);
  struct Found {
    std::size_t region;
    StackHit hit;
  };
  std::vector<Found> found_by_helper, found_here;
  std::atomic<std::size_t> cursor{0};
  constexpr std::size_t kChunk = 32;
  auto scan_predicted = [&](std::vector<Found>& found) {
    StackScanner scanner(mem, mode, busy);
    std::vector<StackHit> hits;
    for (;;) {
      const std::size_t first = cursor.fetch_add(kChunk, std::memory_order_relaxed);
      if (first >= n) return;
      const std::size_t last = std::min(n, first + kChunk);
      for (std::size_t i = first; i < last; ++i) {
        scanner.PrefetchAhead(std::span<const StackRegion>(hint_regions_).first(last), i);
        hits.clear();
        if (!scanner.Scan(hint_regions_[i], hits).ok()) continue;
        state[i] = hits.empty() ? 1 : 2;
        for (StackHit& h : hits) found.push_back({i, std::move(h)});
      }
    }
  };
  helper_->Post([&] { scan_predicted(found_by_helper); });
  Result<std::vector<StackRegion>> regions = kernel_.StackRegions(mem_, vcpus, &*hint_);
  collect_us = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count());
  scan_predicted(found_here);  // whatever the helper has not claimed yet
  helper_->Wait();
  if (!regions.ok()) return regions.status();

  StackCheckReport report = CheckVcpus(vcpus, busy);
  StackScanner scanner(mem, mode, busy);
  std::vector<int> threads;
  threads.reserve(regions->size());
  // The walk meets the tasks in the hint's order when nothing changed: look at the next few
  // predicted regions first, then anywhere.
  std::size_t next = 0;
  auto predicted = [&](const StackRegion& r) -> std::optional<std::size_t> {
    for (std::size_t i = next; i < n && i < next + 4; ++i) {
      if (hint_regions_[i].begin == r.begin && hint_regions_[i].end == r.end) {
        next = i + 1;
        return i;
      }
    }
    const auto it = hint_by_begin_.find(r.begin);
    if (it != hint_by_begin_.end() && hint_regions_[it->second].end == r.end) return it->second;
    return std::nullopt;
  };
  for (std::size_t k = 0; k < regions->size(); ++k) {
    const StackRegion& r = (*regions)[k];
    if (r.begin == 0) continue;
    const std::optional<std::size_t> i = predicted(r);
    if (i && state[*i] != 0) {
      // The same bytes, scanned in this pause: take the result, named after this region.
      report.bytes_scanned += r.end - (r.begin & ~7ull);
      if (state[*i] == 2) {
        for (const auto* found : {&found_by_helper, &found_here}) {
          for (const Found& f : *found) {
            if (f.region == *i) report.hits.push_back({r.pid, r.tid, r.comm, f.hit.function, f.hit.address, r.kind + " stack"});
          }
        }
      }
    } else {
      scanner.PrefetchAhead(*regions, k);
      HV_ASSIGN_OR_RETURN(const std::uint64_t bytes, scanner.Scan(r, report.hits));
      report.bytes_scanned += bytes;
    }
    threads.push_back(r.tid);
  }
  report.threads_scanned = CountThreads(threads);
  return report;
}

}  // namespace hv::patcher
