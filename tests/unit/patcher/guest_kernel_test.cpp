// GuestKernel on a complete fake guest (fake_guest_kernel.h): the model is built from memory
// alone, and hostile memory gives clear errors.
#include "patcher/guest_kernel.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "base/hex.h"
#include "status_matchers.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace hv::patcher {
namespace {

using ::testing::HasSubstr;
using testing::FakeGuestKernel;

Result<std::unique_ptr<GuestKernel>> BuildFrom(FakeGuestKernel& g, GuestKernelOptions o = {}) {
  const auto vcpus = g.vcpus();
  return GuestKernel::Build(g.mem(), vcpus, o);
}

TEST(GuestKernelTest, ReadsIdentityFromMemoryAlone) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->release(), FakeGuestKernel::kRelease);
  EXPECT_EQ((*k)->build_id(), FakeGuestKernel::kBuildId);
  EXPECT_EQ((*k)->kaslr_offset(), FakeGuestKernel::kKaslr);
  EXPECT_EQ((*k)->vmcoreinfo().found_at(), FakeGuestKernel::kVmcoreinfoPa);
  const GuestKernelSummary s = (*k)->Summary();
  EXPECT_EQ(s.symbol_source, "guest memory (kallsyms)");
  EXPECT_EQ(s.modules, std::vector<std::string>{"fakemod"});
  EXPECT_EQ(s.cpus, 2);
  EXPECT_EQ(s.thread_size, FakeGuestKernel::kThreadSize);
  EXPECT_EQ(s.vmlinux_symbols, g.expected_symbols().size());
  EXPECT_EQ(s.symbols, g.expected_symbols().size() + 4);  // fakemod: fake_fn, fake_helper, dup x2
}

TEST(GuestKernelTest, SummaryCountsCpusWithoutTheTaskWalk) {
  FakeGuestKernel g;
  GuestKernelOptions o;
  o.walk_tasks = false;  // as `hvpatch info` does on a running guest
  auto k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().cpus, 2);
  EXPECT_EQ((*k)->Summary().tasks, 0u);
  EXPECT_TRUE((*k)->initial_tasks().tasks.empty());
}

TEST(GuestKernelTest, DecodesEveryVmlinuxSymbolInKallsymsOrder) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  const auto& want = g.expected_symbols();
  const auto& got = (*k)->symbols().symbols();
  ASSERT_GE(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].name) << i;
    EXPECT_EQ(got[i].type, want[i].type) << want[i].name;
    EXPECT_EQ(got[i].address, want[i].value) << want[i].name;
    EXPECT_EQ(got[i].module, "");
  }
  // Per-cpu symbols keep their per-cpu offsets (CONFIG_KALLSYMS_ABSOLUTE_PERCPU).
  auto current = (*k)->FindSymbol("", "current_task");
  ASSERT_THAT(current, IsOk());
  EXPECT_EQ(current->address, FakeGuestKernel::kPcpuCurrentTask);
  EXPECT_EQ(current->type, 'A');
  auto r = (*k)->Resolve("current_task", "vmlinux", 0);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->per_cpu);
}

TEST(GuestKernelTest, CountsSymposLikeLivepatch) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->Resolve("dup_func", "vmlinux", 0),
              StatusIs(Code::kInvalidArgument, HasSubstr("unresolvable ambiguity for symbol 'dup_func'")));
  auto second = (*k)->Resolve("dup_func", "vmlinux", 2);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->address, g.Symbol("dup_func#2"));
  EXPECT_EQ(second->size, 0x40u);  // bounded by the next symbol
  EXPECT_THAT((*k)->Resolve("dup_func", "vmlinux", 3),
              StatusIs(Code::kNotFound, HasSubstr("symbol position 3")));
  EXPECT_THAT((*k)->Resolve("no_such_fn", "", 0), StatusIs(Code::kNotFound, HasSubstr("no_such_fn")));
  auto by_addr = (*k)->SymbolAt(g.Symbol("cmdline_proc_show") + 5);
  ASSERT_THAT(by_addr, IsOk());
  EXPECT_EQ(by_addr->name, "cmdline_proc_show");
}

TEST(GuestKernelTest, ReadsModuleSymbolsFromTheModuleList) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  ASSERT_EQ((*k)->modules().size(), 1u);
  const GuestModule& m = (*k)->modules()[0];
  EXPECT_EQ(m.name, "fakemod");
  std::vector<std::tuple<std::string, char, std::uint32_t>> got;
  for (const KernelSymbol& s : m.symbols) got.emplace_back(s.name, s.type, 0);
  // The undefined 'printk' and the null symbol are not listed; exported fake_fn is upper case.
  ASSERT_EQ(m.symbols.size(), 4u);
  EXPECT_EQ(m.symbols[0].name, "fake_fn");
  EXPECT_EQ(m.symbols[0].type, 'T');
  EXPECT_EQ(m.symbols[1].name, "fake_helper");
  EXPECT_EQ(m.symbols[1].type, 't');
  auto dup2 = (*k)->FindSymbol("fakemod", "dup", 2);
  ASSERT_THAT(dup2, IsOk());
  EXPECT_EQ(dup2->address, m.core_base + 0x200);
  EXPECT_EQ(dup2->size, 0x1000u - 0x200u);  // the last symbol is bounded by the module's end
  EXPECT_THAT((*k)->Resolve("dup", "fakemod", 0), StatusIs(Code::kInvalidArgument, HasSubstr("fakemod")));
  auto any = (*k)->Resolve("fake_helper", "", 0);  // "" searches vmlinux, then the modules
  ASSERT_THAT(any, IsOk());
  EXPECT_EQ(any->address, m.core_base + 0x80);
}

TEST(GuestKernelTest, WalksEveryThreadAndEachCpusIdleTask) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  const TaskSnapshot& snap = (*k)->initial_tasks();
  std::set<std::tuple<int, int, std::string>> got, want;
  for (const GuestTask& t : snap.tasks) {
    if (!t.idle) got.emplace(t.pid, t.tid, t.comm);
  }
  for (const auto& t : g.tasks()) want.emplace(t.tgid, t.pid, t.comm);
  EXPECT_EQ(got, want);
  EXPECT_TRUE(want.count({100, 102, "worker-2"}));  // a thread beyond the leader

  std::vector<std::pair<int, std::string>> idle;
  for (const GuestTask& t : snap.tasks) {
    if (t.idle) idle.emplace_back(t.idle_cpu, t.comm);
  }
  EXPECT_EQ(idle, (std::vector<std::pair<int, std::string>>{{0, "swapper/0"}, {1, "swapper/1"}}));

  ASSERT_EQ(snap.cpus.size(), 2u);
  EXPECT_EQ(snap.cpus[0].current_task, g.Symbol("init_task"));
  EXPECT_EQ(snap.cpus[1].idle_task, g.idle1());
  std::vector<std::string> kinds;
  for (const StackRange& r : snap.cpus[0].stacks) {
    kinds.push_back(r.kind);
    EXPECT_LT(r.begin, r.end);
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"task", "irq", "exception DF_stack",
                                             "exception NMI_stack"}));
  const StackRange& irq = snap.cpus[0].stacks[1];
  EXPECT_EQ(irq.end - irq.begin, FakeGuestKernel::kThreadSize);
  const GuestTask* init = snap.FindTask(snap.cpus[1].current_task);
  ASSERT_NE(init, nullptr);
  EXPECT_EQ(init->comm, "init");
  EXPECT_TRUE(init->on_cpu);
  EXPECT_EQ(init->stack_size, FakeGuestKernel::kThreadSize);
}

TEST(GuestKernelTest, FindsCurrentAndIrqStackThroughPcpuHot) {
  FakeGuestKernel g(/*pcpu_hot=*/true);  // Linux 6.2+: no current_task/hardirq_stack_ptr symbols
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->FindSymbol("", "current_task"), StatusIs(Code::kNotFound, HasSubstr("current_task")));
  const TaskSnapshot& snap = (*k)->initial_tasks();
  ASSERT_EQ(snap.cpus.size(), 2u);
  EXPECT_EQ(snap.cpus[1].current_task, g.tasks()[0].va);  // init
  std::vector<std::string> kinds;
  for (const StackRange& r : snap.cpus[1].stacks) kinds.push_back(r.kind);
  EXPECT_EQ(kinds, (std::vector<std::string>{"task", "irq", "exception DF_stack",
                                             "exception NMI_stack"}));
}

TEST(GuestKernelTest, StackRegionsCoverVcpusAndSleepingTasks) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  const auto vcpus = g.vcpus();
  auto regions = (*k)->StackRegions(g.mem(), vcpus);
  ASSERT_THAT(regions, IsOk());
  int vcpu0 = 0, sleeping = 0;
  for (const StackRegion& r : *regions) {
    if (r.kind == "vCPU 0 task") {
      ++vcpu0;
      EXPECT_EQ(r.begin, vcpus[0].rsp);
      EXPECT_EQ(r.comm, "swapper/0");
    }
    if (r.kind == "task stack") {
      ++sleeping;
      EXPECT_EQ(r.end - r.begin, 0x100u);  // from the saved SP to the top
    }
    EXPECT_NE(r.comm, "init") << "init runs in user mode on vCPU 1: no kernel frames";
  }
  EXPECT_EQ(vcpu0, 1);
  EXPECT_EQ(sleeping, 4);  // kthreadd, threads and its two workers
}

TEST(GuestKernelTest, StackSourceAdapterRewalksEachTime) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  GuestKernelStacks stacks(**k, g.mem());
  const auto vcpus = g.vcpus();
  auto first = stacks.Collect(vcpus);
  ASSERT_THAT(first, IsOk());
  // A thread exits between two pauses (unlinked from its thread list): the next collection
  // no longer scans it.
  const auto& t = g.tasks();
  g.Write64(t[t.size() - 2].va + FakeGuestKernel::kTaskThreadNode,
            g.mem().Read64(g.Pa(t.back().va + FakeGuestKernel::kTaskThreadNode)));
  auto second = stacks.Collect(vcpus);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->size() + 1, first->size());
  for (const StackRegion& r : *second) EXPECT_NE(r.comm, "worker-2");
}

// With guest RAM mapped (vmm::GuestPhysMemory::DirectRam) the walk loads task fields and the
// stack check scans stacks in place; both must see exactly what ReadPhys shows, and the check
// must find a planted return address either way.
TEST(GuestKernelTest, DirectLoadsSeeWhatReadsSee) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  const auto vcpus = g.vcpus();
  auto first = (*k)->StackRegions(g.mem(), vcpus);
  ASSERT_THAT(first, IsOk());
  const auto sleeper = std::find_if(first->begin(), first->end(),
                                    [](const StackRegion& r) { return r.kind == "task stack"; });
  ASSERT_NE(sleeper, first->end());
  constexpr std::uint64_t kFn = 0xffffffff81234000ull;
  g.Write64(sleeper->begin + 0x18, kFn + 5);                // in the busy function
  g.Write64(sleeper->begin + 0x20, kFn - 1);                // just below it
  g.Write64(sleeper->begin + 0x28, kFn + 0x800);            // between the two ranges
  const std::vector<CodeRange> busy = {{kFn, kFn + 0x40, "busy_fn"}, {kFn + 0x1000, kFn + 0x1010, "other"}};
  struct Seen {
    TaskSnapshot snap;
    std::vector<StackRegion> regions;
    StackCheckReport check;
  };
  auto look = [&](bool direct) -> Result<Seen> {
    g.mem().set_direct(direct);
    Seen s;
    HV_ASSIGN_OR_RETURN(s.snap, (*k)->WalkTasks(g.mem()));
    HV_ASSIGN_OR_RETURN(s.regions, (*k)->StackRegions(g.mem(), vcpus));
    HV_ASSIGN_OR_RETURN(s.check, CheckStacks(g.mem(), (*k)->paging(), vcpus, s.regions, busy));
    return s;
  };
  auto copied = look(false);
  auto loaded = look(true);
  ASSERT_THAT(copied, IsOk());
  ASSERT_THAT(loaded, IsOk());
  ASSERT_EQ(loaded->snap.tasks.size(), copied->snap.tasks.size());
  for (std::size_t i = 0; i < copied->snap.tasks.size(); ++i) {
    const GuestTask& a = loaded->snap.tasks[i];
    const GuestTask& b = copied->snap.tasks[i];
    EXPECT_EQ(std::tie(a.task, a.pid, a.tid, a.comm, a.state, a.on_cpu, a.stack_base, a.saved_sp),
              std::tie(b.task, b.pid, b.tid, b.comm, b.state, b.on_cpu, b.stack_base, b.saved_sp));
  }
  ASSERT_EQ(loaded->regions.size(), copied->regions.size());
  for (std::size_t i = 0; i < copied->regions.size(); ++i) {
    EXPECT_EQ(loaded->regions[i].begin, copied->regions[i].begin);
    EXPECT_EQ(loaded->regions[i].end, copied->regions[i].end);
  }
  for (const auto* r : {&*copied, &*loaded}) {
    ASSERT_EQ(r->check.hits.size(), 1u);
    EXPECT_EQ(r->check.hits[0].tid, sleeper->tid);
    EXPECT_EQ(r->check.hits[0].function, "busy_fn");
    EXPECT_EQ(r->check.hits[0].address, kFn + 5);
  }
  EXPECT_EQ(loaded->check.bytes_scanned, copied->check.bytes_scanned);
  EXPECT_EQ(loaded->check.threads_scanned, copied->check.threads_scanned);
  EXPECT_GT(copied->check.bytes_scanned, 0u);
}

TEST(GuestKernelTest, StackRegionsAreConservativeDuringAContextSwitch) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  // kthreadd is being switched in on vCPU 0: on_cpu set, RSP already on its stack while
  // current_task still names swapper/0.
  const std::uint64_t kthreadd = g.tasks()[1].va;
  g.Write32(kthreadd + FakeGuestKernel::kTaskOnCpu, 1);
  const std::uint64_t stack = g.mem().Read64(g.Pa(kthreadd + FakeGuestKernel::kTaskStack));
  auto vcpus = g.vcpus();
  vcpus[0].rsp = stack + 0x1000;
  auto regions = (*k)->StackRegions(g.mem(), vcpus);
  ASSERT_THAT(regions, IsOk());
  bool switching = false, whole = false;
  for (const StackRegion& r : *regions) {
    if (r.comm != "kthreadd") continue;
    if (r.kind == "vCPU 0 switching task") {
      switching = true;
      EXPECT_EQ(r.begin, stack + 0x1000);
    }
    if (r.kind == "task stack") {
      whole = true;
      EXPECT_EQ(r.begin, stack);  // not from its stale saved SP
      EXPECT_EQ(r.end, stack + FakeGuestKernel::kThreadSize);
    }
  }
  EXPECT_TRUE(switching);
  EXPECT_TRUE(whole);
}

// Guest memory read from a mapping (vmm::GuestPhysMemory::ReadsFromMapping), counting reads.
class CountingMemory : public vmm::GuestPhysMemory {
 public:
  CountingMemory(const vmm::GuestPhysMemory& inner, bool mapped) : inner_(inner), mapped_(mapped) {}
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override {
    ++reads;
    bytes += out.size();
    return inner_.ReadPhys(gpa, out);
  }
  std::vector<vmm::PhysRange> RamRanges() const override { return inner_.RamRanges(); }
  bool ReadsFromMapping() const override { return mapped_; }
  mutable int reads = 0;
  mutable std::uint64_t bytes = 0;

 private:
  const vmm::GuestPhysMemory& inner_;
  bool mapped_;
};

TEST(GuestKernelTest, PrepareTouchesEveryStackOnlyWhenMemoryIsAMapping) {
  FakeGuestKernel g;
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  CountingMemory copied(g.mem(), false);
  GuestKernelStacks plain(**k, copied);
  plain.Prepare();
  EXPECT_EQ(copied.reads, 0);  // every read costs the same: nothing to warm

  CountingMemory mapped(g.mem(), true);
  GuestKernelStacks warm(**k, mapped);
  warm.Prepare();
  // It read each task's stack from its saved SP up (0x100 bytes each in the fake) ...
  std::uint64_t stack_bytes = 0;
  auto regions = (*k)->StackRegions(g.mem(), {});
  ASSERT_THAT(regions, IsOk());
  for (const StackRegion& r : *regions) stack_bytes += r.end - r.begin;
  EXPECT_GE(mapped.bytes, stack_bytes);
  // ... and Collect, inside the pause, still reads everything again itself.
  const int before = mapped.reads;
  const auto vcpus = g.vcpus();
  auto collected = warm.Collect(vcpus);
  ASSERT_THAT(collected, IsOk());
  EXPECT_GT(mapped.reads, before);
  auto expected = GuestKernelStacks(**k, g.mem()).Collect(vcpus);
  ASSERT_THAT(expected, IsOk());
  EXPECT_EQ(collected->size(), expected->size());
}

// Guest memory offered as a mapping (DirectRam, ReadsFromMapping): what the commit's pause sees
// with a shared-memory backend, where the task walk uses its hint.
class MappedMemory : public vmm::GuestPhysMemory {
 public:
  explicit MappedMemory(const vmm::GuestPhysMemory& inner) : inner_(inner) {}
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override { return inner_.ReadPhys(gpa, out); }
  std::vector<vmm::PhysRange> RamRanges() const override { return inner_.RamRanges(); }
  std::vector<vmm::DirectRange> DirectRam() const override { return inner_.DirectRam(); }
  bool ReadsFromMapping() const override { return true; }

 private:
  const vmm::GuestPhysMemory& inner_;
};

// The walk's hint (TaskWalker::Walk) only decides what is prefetched: a stale hint, or one of
// garbage addresses, gives the same walk as none.
TEST(GuestKernelTest, AWalkHintChangesOnlyWhatIsPrefetched) {
  FakeGuestKernel g;
  g.mem().set_direct(true);
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  const MappedMemory mapped(g.mem());
  auto hint = (*k)->WalkTasks(mapped);
  ASSERT_THAT(hint, IsOk());
  // After the hint, kthreadd leaves the process list.
  const std::uint64_t kthreadd = g.tasks()[1].va;
  const std::uint64_t node = kthreadd + FakeGuestKernel::kTaskTasks;
  const std::uint64_t next = g.mem().Read64(g.Pa(node)), prev = g.mem().Read64(g.Pa(node + 8));
  g.Write64(prev, next);
  g.Write64(next + 8, prev);
  TaskSnapshot garbage = *hint;
  for (GuestTask& t : garbage.tasks) {
    t.task ^= 0x5a5a5000;
    t.signal = 0xffff888000dead00ull;
  }
  auto plain = (*k)->WalkTasks(mapped);
  auto stale = (*k)->WalkTasks(mapped, &*hint);
  auto bad = (*k)->WalkTasks(mapped, &garbage);
  ASSERT_THAT(plain, IsOk());
  ASSERT_THAT(stale, IsOk());
  ASSERT_THAT(bad, IsOk());
  auto tasks = [](const TaskSnapshot& s) {
    std::vector<std::tuple<std::uint64_t, int, int, std::string, std::uint64_t, std::uint64_t>> out;
    for (const GuestTask& t : s.tasks) out.emplace_back(t.task, t.pid, t.tid, t.comm, t.stack_base, t.saved_sp);
    return out;
  };
  EXPECT_EQ(hint->tasks.size(), plain->tasks.size() + 1);
  EXPECT_EQ(plain->FindTask(kthreadd), nullptr);
  EXPECT_NE(hint->FindTask(kthreadd), nullptr);
  EXPECT_EQ(tasks(*stale), tasks(*plain));
  EXPECT_EQ(tasks(*bad), tasks(*plain));
}

// The two-core check (GuestKernelStacks::Check with a hint) gives the serial check's result when
// the guest changed after Prepare: a busy word written into a stack whose bounds stayed (found
// by the scan of the predicted region, so that scan reads in the pause), a task whose saved SP
// moved (its new region scanned after the walk), a task gone from the list.
TEST(GuestKernelTest, TwoCoreCheckEqualsTheSerialCheck) {
  FakeGuestKernel g;
  g.mem().set_direct(true);
  auto k = BuildFrom(g);
  ASSERT_THAT(k, IsOk());
  const MappedMemory mapped(g.mem());
  GuestKernelStacks stacks(**k, mapped, /*min_shared=*/0);
  stacks.Prepare();

  constexpr std::uint64_t kFn = 0xffffffff81234000ull;
  const std::vector<CodeRange> busy = {{kFn, kFn + 0x40, "busy_fn"}};
  auto sp_of = [&](std::size_t task) {
    return g.mem().Read64(g.Pa(g.tasks()[task].va + FakeGuestKernel::kTaskThread + FakeGuestKernel::kThreadSp));
  };
  // tasks()[0] is init, [1] kthreadd, [2..4] the "threads" process.
  g.Write64(sp_of(2) + 0x10, kFn + 8);  // same bounds as predicted
  const std::uint64_t moved_sp = sp_of(3) - 0x80;
  g.Write64(g.tasks()[3].va + FakeGuestKernel::kTaskThread + FakeGuestKernel::kThreadSp, moved_sp);
  g.Write64(moved_sp + 0x8, kFn + 16);  // below the predicted bounds: only the new region has it
  const std::uint64_t node = g.tasks()[1].va + FakeGuestKernel::kTaskTasks;
  const std::uint64_t next = g.mem().Read64(g.Pa(node)), prev = g.mem().Read64(g.Pa(node + 8));
  g.Write64(prev, next);
  g.Write64(next + 8, prev);

  const auto vcpus = g.vcpus();
  std::uint64_t collect_us = 0;
  auto shared = stacks.Check(mapped, (*k)->paging(), vcpus, busy, collect_us);
  ASSERT_THAT(shared, IsOk());
  auto regions = (*k)->StackRegions(mapped, vcpus);
  ASSERT_THAT(regions, IsOk());
  auto serial = CheckStacks(mapped, (*k)->paging(), vcpus, *regions, busy);
  ASSERT_THAT(serial, IsOk());
  auto hits = [](const StackCheckReport& r) {
    std::set<std::tuple<int, std::string, std::string, std::uint64_t, std::string>> out;
    for (const StackHit& h : r.hits) out.emplace(h.tid, h.comm, h.function, h.address, h.where);
    return out;
  };
  EXPECT_EQ(hits(*shared), hits(*serial));
  EXPECT_EQ(shared->hits.size(), 2u);
  EXPECT_EQ(shared->bytes_scanned, serial->bytes_scanned);
  EXPECT_EQ(shared->threads_scanned, serial->threads_scanned);
}

TEST(GuestKernelTest, FallsBackToAgentKallsyms) {
  FakeGuestKernel g;
  g.Write32(g.Symbol("kallsyms_num_syms"), 0xffffffff);  // absurd count
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("decoding kallsyms: kallsyms_num_syms 4294967295 "
                                               "exceeds the limit")));
  std::string text;
  for (const auto& e : g.expected_symbols()) {
    text += Hex(e.value).substr(2) + " " + e.type + " " + e.name + "\n";
  }
  GuestKernelOptions o;
  o.agent_kallsyms = text;
  auto k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().symbol_source, "agent kallsyms");
  EXPECT_EQ((*k)->Summary().modules, std::vector<std::string>{"fakemod"});
}

TEST(GuestKernelTest, FallsBackToSystemMapWithTheKaslrOffset) {
  FakeGuestKernel g;
  g.Write32(g.Symbol("kallsyms_num_syms"), 0xffffffff);
  // Link-time addresses: the image without the KASLR shift; per-cpu values unshifted.
  std::string map;
  for (const auto& e : g.expected_symbols()) {
    const std::uint64_t link = e.value >= kStartKernelMap ? e.value - FakeGuestKernel::kKaslr : e.value;
    map += Hex(link).substr(2) + " " + e.type + " " + e.name + "\n";
  }
  GuestKernelOptions o;
  o.system_map = map;  // the offset comes from vmcoreinfo's KERNELOFFSET
  auto k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().symbol_source, "System.map");
  auto init = (*k)->FindSymbol("", "init_task");
  ASSERT_THAT(init, IsOk());
  EXPECT_EQ(init->address, g.Symbol("init_task"));
  EXPECT_EQ((*k)->FindSymbol("", "runqueues")->address, FakeGuestKernel::kPcpuRunqueues);
  EXPECT_EQ((*k)->initial_tasks().tasks.size(), g.tasks().size() + 2);
}

TEST(GuestKernelTest, RejectsCyclicProcessList) {
  FakeGuestKernel g;
  // The last process points back at the first one instead of init_task.
  const auto& t = g.tasks();
  const std::uint64_t first = t[0].va, last = t.back().va;
  std::uint64_t leader = 0;
  for (const auto& task : t) {
    if (task.pid == task.tgid) leader = task.va;
  }
  (void)last;
  g.Write64(leader + FakeGuestKernel::kTaskTasks, first + FakeGuestKernel::kTaskTasks);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("walking tasks: cycle in the process list")));
}

TEST(GuestKernelTest, RejectsCyclicThreadList) {
  FakeGuestKernel g;
  const auto& t = g.tasks();
  // worker-2 of "threads" points back at worker-1.
  g.Write64(t.back().va + FakeGuestKernel::kTaskThreadNode,
            t[t.size() - 2].va + FakeGuestKernel::kTaskThreadNode);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument, HasSubstr("cycle in the thread list")));
}

TEST(GuestKernelTest, RejectsAbsurdCpuCount) {
  FakeGuestKernel g;
  g.Write32(g.Symbol("nr_cpu_ids"), 1u << 30);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument, HasSubstr("nr_cpu_ids 1073741824")));
}

TEST(GuestKernelTest, RejectsUnmappedTaskPointer) {
  FakeGuestKernel g;
  g.Write64(g.tasks()[1].va + FakeGuestKernel::kTaskTasks, 0xffff888000000000ull);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kNotFound, HasSubstr("walking the process list")));
}

TEST(GuestKernelTest, RejectsGarbageBtf) {
  FakeGuestKernel g;
  std::vector<std::uint8_t> junk(g.btf_size(), 0x5a);
  g.mem().Write(g.btf_pa(), junk);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument, HasSubstr("reading BTF: malformed BTF")));
}

TEST(GuestKernelTest, RejectsCyclicModuleList) {
  FakeGuestKernel g;
  // The module's list node points at itself.
  g.Write64(g.module_va() + FakeGuestKernel::kModList, g.module_va() + FakeGuestKernel::kModList);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("reading modules: cycle in the module list")));
}

TEST(GuestKernelTest, RejectsAbsurdModuleSymbolCount) {
  FakeGuestKernel g;
  const std::uint64_t ks = g.mem().Read64(g.Pa(g.module_va() + FakeGuestKernel::kModKallsyms));
  g.Write32(ks + 8, 0x7fffffff);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("module 'fakemod' num_symtab 2147483647 exceeds")));
}

TEST(GuestKernelTest, RejectsKallsymsCountBeyondTheNames) {
  FakeGuestKernel g;
  // More symbols than the names table holds: decoding runs into the markers that follow it.
  g.Write32(g.Symbol("kallsyms_num_syms"),
            static_cast<std::uint32_t>(g.expected_symbols().size() + 1000));
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kInvalidArgument,
                                     HasSubstr("decoding kallsyms: kallsyms symbol")));
}

TEST(GuestKernelTest, TakesVmcoreinfoFromAHintTheVcpusConfirm) {
  FakeGuestKernel g;
  GuestKernelOptions o;
  auto k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().vmcoreinfo_source, "scan");
  o.vmcoreinfo_hint = (*k)->Summary().vmcoreinfo_gpa;
  k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().vmcoreinfo_source, "hint");
  EXPECT_EQ((*k)->Summary().vmcoreinfo_gpa, FakeGuestKernel::kVmcoreinfoPa);
  EXPECT_EQ((*k)->kaslr_offset(), FakeGuestKernel::kKaslr);
  // A second live copy (the kernel keeps two: the data page and the note), after the first:
  // the scan would not reach it, the hint does.
  const std::string& text = g.vmcoreinfo_text();
  g.mem().Write(0x500000, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  o.vmcoreinfo_hint = 0x500000;
  k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().vmcoreinfo_source, "hint");
  EXPECT_EQ((*k)->vmcoreinfo().found_at(), 0x500000u);
}

TEST(GuestKernelTest, ScansWhenTheHintHoldsNoVmcoreinfo) {
  FakeGuestKernel g;
  GuestKernelOptions o;
  o.vmcoreinfo_hint = 0x500000;  // zeroes
  auto k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ((*k)->Summary().vmcoreinfo_source,
            "scan (hint 0x500000 rejected: no vmcoreinfo at 0x500000)");
  EXPECT_EQ((*k)->vmcoreinfo().found_at(), FakeGuestKernel::kVmcoreinfoPa);
  o.vmcoreinfo_hint = FakeGuestKernel::kRamSize + 0x1000;  // the VM got smaller
  k = BuildFrom(g, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->Summary().vmcoreinfo_source,
              ::testing::StartsWith("scan (hint 0x4001000 rejected: guest-physical address 0x4001000 is not guest RAM"));
  EXPECT_EQ((*k)->vmcoreinfo().found_at(), FakeGuestKernel::kVmcoreinfoPa);
  // Without vCPU state nothing can confirm a hint.
  o.vmcoreinfo_hint = FakeGuestKernel::kVmcoreinfoPa;
  k = GuestKernel::Build(g.mem(), {}, o);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->Summary().vmcoreinfo_source, HasSubstr("rejected: no vCPU state can confirm"));
}

// After a reboot with a new KASLR, the hinted page may still hold the previous boot's copy, and
// the previous init_uts_ns may still hold the same release: the vCPUs' page tables tell.
TEST(GuestKernelTest, RejectsAStaleHintAfterAReboot) {
  FakeGuestKernel g;
  constexpr std::uint64_t kStalePa = 0x100000;
  for (std::uint64_t va_shift : {std::uint64_t{0}, std::uint64_t{64} << 20}) {
    g.WriteStaleVmcoreinfo(kStalePa, va_shift, 0x600000);
    GuestKernelOptions o;
    o.vmcoreinfo_hint = kStalePa;
    auto k = BuildFrom(g, o);
    ASSERT_THAT(k, IsOk()) << "va_shift " << va_shift;
    EXPECT_THAT((*k)->Summary().vmcoreinfo_source,
                ::testing::StartsWith("scan (hint 0x100000 rejected: stale copy: the live page tables do not map "
                                      "SYMBOL(init_uts_ns)"));
    EXPECT_EQ((*k)->vmcoreinfo().found_at(), FakeGuestKernel::kVmcoreinfoPa);
    EXPECT_EQ((*k)->kaslr_offset(), FakeGuestKernel::kKaslr);
    EXPECT_EQ((*k)->symbols().size(), g.expected_symbols().size() + 4);
  }
}

TEST(GuestKernelTest, FailsWithoutVmcoreinfo) {
  FakeGuestKernel g;
  std::vector<std::uint8_t> zero(4096, 0);
  g.mem().Write(FakeGuestKernel::kVmcoreinfoPa, zero);
  EXPECT_THAT(BuildFrom(g), StatusIs(Code::kNotFound,
                                     HasSubstr("finding vmcoreinfo: no vmcoreinfo page in guest RAM")));
}

}  // namespace
}  // namespace hv::patcher
