// The guest kernel model on a real TCG guest (issue 4 acceptance): everything read from guest
// memory through the QEMU backend must equal what the guest itself reports.
//
//   symbols    /proc/kallsyms, line for line (vmlinux part and [module] part); the
//              non-module brackets ([bpf], [__builtin__ftrace], [__builtin__kprobes]) are not
//              symbols of any object a patch can target and are left out of the comparison
//   identity   uname -r, the GNU build-id note in /sys/kernel/notes
//   tasks      the (pid, tid, comm) set of /proc/*/task/*, listed before and after the walk,
//              with a 5-thread process running; plus one idle task per CPU. Kernel threads'
//              /proc comm carries decorations task->comm does not have (see the test)
//   BTF cache  a second Build with the same state directory answers BTF from the first one's
//              recorded answers (btf_answers.h) without parsing, each answer equal to the parse's
#include "patcher/guest_kernel.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include "base/hex.h"
#include "cli/kernel_cache_file.h"
#include "patcher/shadow_module.h"
#include "patcher/static_keys.h"
#include "status_matchers.h"
#include "tests/harness/test_vm.h"
#include "vmm/vm.h"

namespace hv::patcher {
namespace {

using ::hv::testing::TestVm;
using ::testing::HasSubstr;

using TaskKey = std::tuple<int, int, std::string>;  // pid (tgid), tid, comm

class GuestKernelIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    hv::testing::TestVmOptions o;
    o.agent = false;
    auto g = TestVm::Start(o);
    ASSERT_THAT(g, IsOk());
    guest_ = g->release();
    // A multi-threaded process: the walk must find threads beyond the leader.
    auto started = guest_->Check("threads 5 > /tmp/threads.log 2>&1 & sleep 1; cat /tmp/threads.log");
    ASSERT_THAT(started, IsOk());
    ASSERT_THAT(*started, HasSubstr("with 5 threads"));
    // A big module besides the virtio ones the image loads: kvm (5000+ symbols, every type
    // letter, exports of both kinds). Without SVM/VMX it loads but does not register.
    ASSERT_THAT(guest_->Check("insmod /lib/modules/irqbypass.ko && insmod /lib/modules/kvm.ko"), IsOk());
    auto vm = vmm::Open(guest_->qmp_target());
    ASSERT_THAT(vm, IsOk());
    vm_ = vm->release();

    ASSERT_THAT(vm_->Pause(), IsOk());
    auto vcpus = vm_->VcpuStates();
    ASSERT_THAT(vcpus, IsOk());
    const auto t0 = std::chrono::steady_clock::now();
    auto k = GuestKernel::Build(*vm_, *vcpus);
    build_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_THAT(vm_->Resume(), IsOk());
    ASSERT_THAT(k, IsOk());
    kernel_ = k->release();
  }
  static void TearDownTestSuite() {
    delete kernel_;
    kernel_ = nullptr;
    delete vm_;
    vm_ = nullptr;
    if (guest_) {
      EXPECT_THAT(guest_->Stop(), IsOk());
    }
    delete guest_;
    guest_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(kernel_, nullptr) << "the model was not built"; }

  // A guest file, gzip-compressed in the guest (the command channel is slow for 10 MB of text).
  static std::string GuestFile(const std::string& path) {
    auto gz = guest_->Check("gzip -c " + path, 300);
    EXPECT_THAT(gz, IsOk());
    if (!gz.ok()) return {};
    char tmpl[] = "/tmp/hvpatch-kallsyms-XXXXXX";
    const int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, gz->data(), gz->size()), static_cast<ssize_t>(gz->size()));
    close(fd);
    std::string text;
    FILE* p = popen(("gzip -dc " + std::string(tmpl)).c_str(), "r");
    EXPECT_NE(p, nullptr);
    char buf[65536];
    for (std::size_t n; p && (n = fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, n);
    if (p) {
      EXPECT_EQ(pclose(p), 0);
    }
    unlink(tmpl);
    return text;
  }

  static std::set<TaskKey> GuestTasks() {
    auto out = guest_->Check(
        "for t in /proc/[0-9]*/task/[0-9]*; do p=${t#/proc/}; p=${p%%/*}; "
        "c=$(cat $t/comm 2>/dev/null) && echo \"$p ${t##*/} $c\"; done");
    EXPECT_THAT(out, IsOk());
    std::set<TaskKey> tasks;
    std::istringstream in(out.ok() ? *out : "");
    for (std::string line; std::getline(in, line);) {
      std::istringstream f(line);
      int pid = 0, tid = 0;
      std::string comm;
      f >> pid >> tid;
      std::getline(f, comm);
      if (!comm.empty() && comm[0] == ' ') comm.erase(0, 1);
      tasks.emplace(pid, tid, comm);
    }
    return tasks;
  }

  static TestVm* guest_;
  static vmm::Vm* vm_;
  static GuestKernel* kernel_;
  static double build_ms_;
};
TestVm* GuestKernelIntegrationTest::guest_ = nullptr;
vmm::Vm* GuestKernelIntegrationTest::vm_ = nullptr;
GuestKernel* GuestKernelIntegrationTest::kernel_ = nullptr;
double GuestKernelIntegrationTest::build_ms_ = 0;

std::string Line(const KernelSymbol& s) {
  char addr[17];
  std::snprintf(addr, sizeof addr, "%016llx", static_cast<unsigned long long>(s.address));
  std::string l = std::string(addr) + " " + s.type + " " + std::string(s.name);
  if (!s.module.empty()) l += "\t[" + std::string(s.module) + "]";
  return l;
}

// Compares two line lists and describes the first differences.
void ExpectSameLines(const std::vector<std::string>& got, const std::vector<std::string>& want,
                     const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  int shown = 0;
  for (std::size_t i = 0; i < std::max(got.size(), want.size()) && shown < 10; ++i) {
    const std::string g = i < got.size() ? got[i] : "<none>";
    const std::string w = i < want.size() ? want[i] : "<none>";
    if (g != w) {
      ADD_FAILURE() << what << " line " << i << ": memory '" << g << "' guest '" << w << "'";
      ++shown;
    }
  }
}

// One answer as text, whatever its kind, for comparing a cached KernelBtf with a parsed one.
std::string AnswerText(const KernelBtf& btf, const BtfQuestion& q) {
  auto text = [](const auto& r) -> std::string {
    if (!r.ok()) return std::string(CodeName(r.status().code())) + ": " + r.status().message();
    if constexpr (std::is_same_v<std::decay_t<decltype(*r)>, std::uint64_t>) {
      return std::to_string(*r);
    } else {
      std::string out;
      for (const auto& m : *r) out += m.name + "@" + std::to_string(m.offset) + "/" + std::to_string(m.size) + " ";
      return out;
    }
  };
  switch (q.kind) {
    case BtfQuestionKind::kOffset: return text(btf.Offset(q.type, q.path));
    case BtfQuestionKind::kMemberSize: return text(btf.MemberSize(q.type, q.path));
    case BtfQuestionKind::kTypeSize: return text(btf.TypeSize(q.type));
    case BtfQuestionKind::kMembers: return text(btf.Members(q.type));
    case BtfQuestionKind::kTypeCount: return std::to_string(btf.type_count());
  }
  return "?";
}

// The warm start of `hvpatch` commands (each a fresh process with one state directory): the
// first Build parses BTF and saves its answers, the commit's questions (shadow module, static
// keys, CPU features) are parsed lazily through the VM and saved too, and the next Build
// answers all of them without reading BTF, each exactly as the parse does.
TEST_F(GuestKernelIntegrationTest, SecondBuildAnswersBtfFromTheCache) {
  char dir[] = "/tmp/hvpatch-btf-cache-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  cli::KernelCacheFile store(std::string(dir) + "/cache");
  auto build = [&]() -> Result<std::unique_ptr<GuestKernel>> {
    HV_RETURN_IF_ERROR(vm_->Pause());
    auto vcpus = vm_->VcpuStates();
    GuestKernelOptions o;
    o.cache = &store;
    o.memory_after_build = vm_;
    auto k = vcpus.ok() ? GuestKernel::Build(*vm_, *vcpus, o) : Result<std::unique_ptr<GuestKernel>>(vcpus.status());
    HV_RETURN_IF_ERROR(vm_->Resume());
    return k;
  };
  // What a commit asks, after Build.
  auto commit_questions = [](GuestKernel& k) -> Status {
    HV_ASSIGN_OR_RETURN(auto shadow, ShadowModuleLayout::Read(k.btf(), k));
    HV_ASSIGN_OR_RETURN(auto keys, StaticKeyLayout::Read(k.btf(), k));
    HV_ASSIGN_OR_RETURN(auto caps, k.btf().Offset("cpuinfo_x86", "x86_capability"));
    EXPECT_EQ(shadow.module_size, *kernel_->btf().TypeSize("module"));
    EXPECT_EQ(keys.node_size, *kernel_->btf().TypeSize("static_key_mod"));
    EXPECT_EQ(caps, *kernel_->btf().Offset("cpuinfo_x86", "x86_capability"));
    return Status::Ok();
  };

  auto cold = build();
  ASSERT_THAT(cold, IsOk());
  EXPECT_THAT((*cold)->Summary().btf_cache, ::testing::StartsWith("miss: no cache entry"));
  EXPECT_TRUE((*cold)->btf().parsed());

  auto warm = build();
  ASSERT_THAT(warm, IsOk());
  EXPECT_EQ((*warm)->Summary().btf_cache, "hit");
  EXPECT_FALSE((*warm)->btf().parsed());
  ASSERT_THAT(commit_questions(**warm), IsOk());
  EXPECT_TRUE((*warm)->btf().parsed()) << "the commit's questions were not in the entry";
  ASSERT_THAT((*warm)->SaveBtfAnswers(store), IsOk());

  auto third = build();
  ASSERT_THAT(third, IsOk());
  EXPECT_EQ((*third)->Summary().btf_cache, "hit");
  ASSERT_THAT(commit_questions(**third), IsOk());
  EXPECT_FALSE((*third)->btf().parsed());
  EXPECT_FALSE((*third)->btf().HasUnsavedAnswers());

  // The same layouts as the suite's model (no cache), answer by answer.
  const TaskLayout& a = kernel_->task_layout();
  const TaskLayout& b = (*third)->task_layout();
  EXPECT_EQ(std::tie(a.tasks, a.pid, a.tgid, a.comm, a.stack, a.thread_sp, a.state, a.on_cpu, a.thread_size),
            std::tie(b.tasks, b.pid, b.tgid, b.comm, b.stack, b.thread_sp, b.state, b.on_cpu, b.thread_size));
  EXPECT_EQ((*third)->Summary().modules, kernel_->Summary().modules);
  const auto answers = (*warm)->btf().recorded().answers;
  EXPECT_GT(answers.size(), 40u);
  for (const auto& [q, answer] : answers) {
    EXPECT_EQ(AnswerText((*third)->btf(), q), AnswerText(kernel_->btf(), q)) << q.type << " " << q.path;
  }
  EXPECT_FALSE((*third)->btf().parsed());
  std::cout << "BTF step: cold " << (*cold)->timings().btf_ms << " ms, warm " << (*third)->timings().btf_ms
            << " ms; " << answers.size() << " answers\n";
  std::system(("rm -rf " + std::string(dir)).c_str());
}

TEST_F(GuestKernelIntegrationTest, IdentityMatchesTheGuest) {
  auto release = guest_->Check("uname -r");
  ASSERT_THAT(release, IsOk());
  EXPECT_EQ(kernel_->release() + "\n", *release);

  // /sys/kernel/notes holds ELF notes; the GNU build-id is type 3, name "GNU".
  auto hex = guest_->Check("od -An -tx1 -v /sys/kernel/notes");
  ASSERT_THAT(hex, IsOk());
  std::vector<std::uint8_t> notes;
  std::istringstream in(*hex);
  for (std::string byte; in >> byte;) notes.push_back(static_cast<std::uint8_t>(std::stoul(byte, nullptr, 16)));
  std::string build_id;
  for (std::size_t at = 0; at + 12 <= notes.size();) {
    std::uint32_t namesz, descsz, type;
    std::memcpy(&namesz, &notes[at], 4);
    std::memcpy(&descsz, &notes[at + 4], 4);
    std::memcpy(&type, &notes[at + 8], 4);
    const std::size_t name_at = at + 12, desc_at = name_at + ((namesz + 3) & ~3u);
    if (desc_at + descsz > notes.size()) break;
    if (type == 3 && namesz == 4 && std::memcmp(&notes[name_at], "GNU", 4) == 0) {
      build_id = HexString(std::span(&notes[desc_at], descsz));
    }
    at = desc_at + ((descsz + 3) & ~3u);
  }
  ASSERT_FALSE(build_id.empty()) << "no GNU build-id note in /sys/kernel/notes";
  EXPECT_EQ(kernel_->build_id(), build_id);
  const GuestKernelSummary s = kernel_->Summary();
  EXPECT_EQ(s.symbol_source, "guest memory (kallsyms)");
  EXPECT_EQ(s.cpus, 2);
  std::cout << "GuestKernel::Build took " << build_ms_ << " ms; " << s.symbols << " symbols, "
            << s.modules.size() << " modules, " << s.tasks << " tasks, KASLR offset "
            << Hex(s.kaslr_offset) << "\n";
}

TEST_F(GuestKernelIntegrationTest, SymbolsEqualProcKallsyms) {
  const std::string text = GuestFile("/proc/kallsyms");
  ASSERT_FALSE(text.empty());
  std::vector<std::string> want_vmlinux, want_modules, got_vmlinux, got_modules;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const std::size_t tab = line.find('\t');
    if (tab == std::string::npos) {
      want_vmlinux.push_back(line);
      continue;
    }
    const std::string module = line.substr(tab + 1);
    if (module == "[bpf]" || module == "[__builtin__ftrace]" || module == "[__builtin__kprobes]") continue;
    want_modules.push_back(line);
  }
  for (const KernelSymbol& s : kernel_->symbols().symbols()) {
    (s.module.empty() ? got_vmlinux : got_modules).push_back(Line(s));
  }
  ASSERT_GT(want_vmlinux.size(), 10000u);
  ExpectSameLines(got_vmlinux, want_vmlinux, "vmlinux");
  ASSERT_GT(want_modules.size(), 5000u);  // virtio modules and kvm
  ExpectSameLines(got_modules, want_modules, "modules");
  const auto modules = kernel_->symbols().modules();
  EXPECT_NE(std::find(modules.begin(), modules.end(), "kvm"), modules.end());
  EXPECT_GT(kernel_->symbols().CountIn("kvm"), 5000u);
}

TEST_F(GuestKernelIntegrationTest, TaskWalkEqualsProc) {
  const std::set<TaskKey> before = GuestTasks();
  ASSERT_THAT(vm_->Pause(), IsOk());
  auto snap = kernel_->WalkTasks(*vm_);
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(snap, IsOk());
  const std::set<TaskKey> after = GuestTasks();

  std::set<TaskKey> walked;
  std::vector<std::pair<int, std::string>> idle;
  for (const GuestTask& t : snap->tasks) {
    if (t.idle) {
      idle.emplace_back(t.idle_cpu, t.comm);
      continue;
    }
    walked.emplace(t.pid, t.tid, t.comm);
  }
  // /proc/PID/comm is task->comm except for kernel threads (proc_task_name(), 6.1): a
  // workqueue worker shows "comm-description" or "comm+description" (wq_worker_comm), and a
  // kthread whose name was cut to 15 characters shows its full name (get_kthread_comm).
  auto same_task = [](const TaskKey& proc, const TaskKey& mem) {
    const std::string& p = std::get<2>(proc);
    const std::string& m = std::get<2>(mem);
    if (std::get<0>(proc) != std::get<0>(mem) || std::get<1>(proc) != std::get<1>(mem)) return false;
    if (p == m) return true;
    if (p.size() <= m.size() || p.compare(0, m.size(), m) != 0) return false;
    return m.size() == 15 || p[m.size()] == '-' || p[m.size()] == '+';
  };
  auto listed = [&](const std::set<TaskKey>& list, const TaskKey& t) {
    for (const TaskKey& l : list) {
      if (same_task(l, t)) return true;
    }
    return false;
  };
  // Alive at both listings (same pid, tid and comm), so alive during the walk: it must be found.
  for (const TaskKey& t : before) {
    if (!after.count(t)) continue;
    bool found = false;
    for (const TaskKey& w : walked) found = found || same_task(t, w);
    EXPECT_TRUE(found) << "missed pid " << std::get<0>(t) << " tid " << std::get<1>(t) << " ("
                       << std::get<2>(t) << ")";
  }
  // Everything walked existed in the guest's own view at one of the two listings.
  for (const TaskKey& t : walked) {
    EXPECT_TRUE(listed(before, t) || listed(after, t))
        << "walked pid " << std::get<0>(t) << " tid " << std::get<1>(t) << " (" << std::get<2>(t)
        << ") that /proc never showed";
  }
  // The 5-thread process: the leader and 4 workers.
  int threads_pid = 0;
  for (const TaskKey& t : walked) {
    if (std::get<2>(t) == "threads" && std::get<0>(t) == std::get<1>(t)) threads_pid = std::get<0>(t);
  }
  ASSERT_NE(threads_pid, 0);
  int workers = 0;
  for (const TaskKey& t : walked) {
    if (std::get<0>(t) == threads_pid && std::get<2>(t).rfind("worker-", 0) == 0) ++workers;
  }
  EXPECT_EQ(workers, 4);
  EXPECT_EQ(idle, (std::vector<std::pair<int, std::string>>{{0, "swapper/0"}, {1, "swapper/1"}}));
}

TEST_F(GuestKernelIntegrationTest, StackRegionsForTheCommit) {
  ASSERT_THAT(vm_->Pause(), IsOk());
  auto vcpus = vm_->VcpuStates();
  ASSERT_THAT(vcpus, IsOk());
  auto snap = kernel_->WalkTasks(*vm_);
  auto regions = kernel_->StackRegions(*vm_, *vcpus);
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(snap, IsOk());
  ASSERT_THAT(regions, IsOk());
  // Each vCPU is a distinct guest CPU (matched through its GS base).
  std::set<int> cpus;
  for (const vmm::VcpuState& v : *vcpus) cpus.insert(TaskWalker::CpuOfVcpu(*snap, v));
  EXPECT_EQ(cpus, (std::set<int>{0, 1}));
  // Every CPU has a task stack, an IRQ stack and the IST stacks.
  for (const CpuView& c : snap->cpus) {
    std::set<std::string> kinds;
    for (const StackRange& r : c.stacks) kinds.insert(r.kind);
    EXPECT_TRUE(kinds.count("task") && kinds.count("irq") && kinds.count("exception NMI_stack") &&
                kinds.count("exception DF_stack"))
        << "CPU " << c.cpu;
  }
  // Every sleeping thread's region starts at its saved SP inside its 16 KiB stack.
  std::size_t task_regions = 0;
  for (const StackRegion& r : *regions) {
    EXPECT_LT(r.begin, r.end) << r.kind << " " << r.comm;
    EXPECT_LE(r.end - r.begin, kernel_->task_layout().thread_size) << r.kind << " " << r.comm;
    if (r.kind == "task stack") ++task_regions;
  }
  EXPECT_GE(task_regions + 2, snap->tasks.size() - 2);
  EXPECT_EQ(kernel_->task_layout().thread_size, 16384u);
}

}  // namespace
}  // namespace hv::patcher
