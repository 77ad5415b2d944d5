// Issue 14 on a real TCG guest whose RAM is a shared memfd and which runs no agent (the port
// exists, nobody opens it in the guest):
//  - hvpatch maps guest RAM and reads the same tasks and stacks as process_vm_readv does;
//  - an absent agent is known from QEMU at once: apply, revert and list wait for no timeout;
//  - the second command on the VM uses the decoded kallsyms from the state directory, and a
//    damaged entry is decoded again and rewritten.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/uio.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "patcher/guest_kernel.h"
#include "status_matchers.h"
#include "tests/harness/run_program.h"
#include "tests/harness/test_vm.h"
#include "vmm/qemu_vm.h"

namespace hv::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Guest RAM through process_vm_readv on QEMU's own mapping, as hvpatch reads anonymous RAM.
class ProcessVmMemory : public vmm::GuestPhysMemory {
 public:
  ProcessVmMemory(pid_t pid, std::vector<vmm::HostRange> ranges) : pid_(pid), ranges_(std::move(ranges)) {}
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override {
    for (const vmm::HostRange& r : ranges_) {
      if (gpa < r.gpa || gpa - r.gpa + out.size() > r.size) continue;
      iovec local{out.data(), out.size()};
      iovec remote{reinterpret_cast<void*>(r.hva + (gpa - r.gpa)), out.size()};
      if (process_vm_readv(pid_, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(out.size())) {
        return ErrnoError("process_vm_readv", errno);
      }
      return Status::Ok();
    }
    return InvalidArgument("gpa outside one RAM range");
  }
  std::vector<vmm::PhysRange> RamRanges() const override {
    std::vector<vmm::PhysRange> out;
    for (const vmm::HostRange& r : ranges_) out.push_back({r.gpa, r.size});
    return out;
  }

 private:
  pid_t pid_;
  std::vector<vmm::HostRange> ranges_;
};

class FastPathTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TestVmOptions o;
    o.shared_ram = true;
    o.agent = false;  // the agent port is there, no agent behind it
    auto vm = TestVm::Start(o);
    ASSERT_THAT(vm, IsOk());
    vm_ = std::move(*vm).release();
    char t[] = "/tmp/hvpatch-fastpath-XXXXXX";
    ASSERT_NE(mkdtemp(t), nullptr);
    state_ = t;
    // Some sleeping processes, so the walk has more than the kernel's threads.
    ASSERT_THAT(vm_->Check("i=0; while [ $i -lt 40 ]; do sleep 100000 & i=$((i+1)); done; echo ok"), IsOk());
  }
  static void TearDownTestSuite() {
    delete vm_;
    vm_ = nullptr;
    std::filesystem::remove_all(state_);
  }

  // Every hvpatch run here asks for an agent timeout far over the process's time bound: a
  // command that waited for the absent agent would be killed and fail the test.
  static ProgramResult Hvpatch(std::vector<std::string> args, const std::string& state = state_) {
    const char* bin = std::getenv("HVPATCH_BIN");
    std::vector<std::string> argv = {bin ? bin : "hvpatch", "--state-dir", state, "--agent-timeout-ms", "600000"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunProgram(argv, {}, 240);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : ProgramResult{};
  }
  static std::string Guest(std::string_view script) {
    auto r = vm_->Check(script);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : "";
  }
  // The test's own connection to the guest and its kernel model, built in a pause that is still
  // held on return (Resume() ends it), with the vCPUs' state read in it.
  struct Model {
    std::unique_ptr<vmm::QemuVm> vm;
    std::vector<vmm::VcpuState> vcpus;
    std::unique_ptr<patcher::GuestKernel> kernel;
  };
  static Result<Model> PausedModel() {
    Model m;
    HV_ASSIGN_OR_RETURN(m.vm, vmm::QemuVm::Connect(vm_->qmp_path()));
    if (!m.vm->ReadsFromMapping()) return FailedPrecondition("guest RAM is not mapped: " + m.vm->ram_access());
    HV_RETURN_IF_ERROR(m.vm->Pause());
    Result<std::vector<vmm::VcpuState>> vcpus = m.vm->VcpuStates();
    patcher::GuestKernelOptions o;
    o.walk_tasks = false;
    Result<std::unique_ptr<patcher::GuestKernel>> k =
        vcpus.ok() ? patcher::GuestKernel::Build(*m.vm, *vcpus, o) : Result<std::unique_ptr<patcher::GuestKernel>>(vcpus.status());
    if (!k.ok()) {
      (void)m.vm->Resume();
      return k.status();
    }
    m.vcpus = std::move(*vcpus);
    m.kernel = std::move(*k);
    return m;
  }
  static nlohmann::json Json(const ProgramResult& r) {
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << r.out << r.err;
    return j;
  }

  static TestVm* vm_;
  static std::string state_;
};
TestVm* FastPathTest::vm_ = nullptr;
std::string FastPathTest::state_;

TEST_F(FastPathTest, MappedGuestRamGivesTheSameTasksAndStacksAsProcessVmReadv) {
  auto model = PausedModel();
  ASSERT_THAT(model, IsOk());
  auto& vm = model->vm;
  auto& k = model->kernel;
  const auto* vcpus = &model->vcpus;
  EXPECT_THAT(vm->ram_access(), StartsWith("mapped /proc/"));
  ProcessVmMemory pvm(vm->qemu_pid(), vm->host_ram());
  auto mapped_snap = k->WalkTasks(*vm);
  auto copied_snap = k->WalkTasks(pvm);
  auto mapped = k->StackRegions(*vm, *vcpus);
  auto copied = k->StackRegions(pvm, *vcpus);
  // Every sleeping task's stack holds a return address into __schedule: a check both must hit.
  auto sched = k->FindSymbol("", "__schedule");
  ASSERT_THAT(sched, IsOk());
  const std::vector<patcher::CodeRange> busy = {{sched->address, sched->address + sched->size, "__schedule"}};
  const vmm::PagingMode mode{(*vcpus)[0].cr3, (*vcpus)[0].la57(), (((*vcpus)[0].efer >> 11) & 1) != 0};
  Result<patcher::StackCheckReport> mapped_check = InvalidArgument("not run"), copied_check = InvalidArgument("not run");
  if (mapped.ok() && copied.ok()) {
    mapped_check = patcher::CheckStacks(*vm, mode, *vcpus, *mapped, busy);
    copied_check = patcher::CheckStacks(pvm, mode, *vcpus, *copied, busy);
  }
  ASSERT_THAT(vm->Resume(), IsOk());

  ASSERT_THAT(mapped_snap, IsOk());
  ASSERT_THAT(copied_snap, IsOk());
  ASSERT_GE(mapped_snap->tasks.size(), 40u);
  ASSERT_EQ(mapped_snap->tasks.size(), copied_snap->tasks.size());
  for (std::size_t i = 0; i < mapped_snap->tasks.size(); ++i) {
    const auto& a = mapped_snap->tasks[i];
    const auto& b = copied_snap->tasks[i];
    EXPECT_EQ(a.task, b.task);
    EXPECT_EQ(a.tid, b.tid);
    EXPECT_EQ(a.comm, b.comm);
    EXPECT_EQ(a.saved_sp, b.saved_sp);
    EXPECT_EQ(a.stack_base, b.stack_base);
  }
  ASSERT_THAT(mapped, IsOk());
  ASSERT_THAT(copied, IsOk());
  ASSERT_EQ(mapped->size(), copied->size());
  for (std::size_t i = 0; i < mapped->size(); ++i) {
    EXPECT_EQ((*mapped)[i].tid, (*copied)[i].tid);
    EXPECT_EQ((*mapped)[i].begin, (*copied)[i].begin);
    EXPECT_EQ((*mapped)[i].end, (*copied)[i].end);
    EXPECT_EQ((*mapped)[i].kind, (*copied)[i].kind);
  }
  ASSERT_THAT(mapped_check, IsOk());
  ASSERT_THAT(copied_check, IsOk());
  EXPECT_EQ(mapped_check->bytes_scanned, copied_check->bytes_scanned);
  EXPECT_EQ(mapped_check->hits.size(), copied_check->hits.size());
  EXPECT_GE(mapped_check->hits.size(), 40u);  // at least every sleep
}

// With hundreds of tasks and mapped RAM, the commit's check runs on two cores
// (GuestKernelStacks::Check): the same hits, bytes and threads as the serial check over
// process_vm_readv, in-process; then through the CLI, a busy function is refused by name and a
// patch of an idle one applies and reverts.
TEST_F(FastPathTest, ManyTasksAreCheckedOnTwoCoresWithTheSerialResult) {
  ASSERT_EQ(Guest("rm -f /tmp/many; i=0; while [ $i -lt 300 ]; do sleep 200002 </dev/null >/dev/null 2>&1 & "
                  "echo $! >> /tmp/many; i=$((i+1)); done; wc -l < /tmp/many"),
            "300\n");
  {
    auto model = PausedModel();
    ASSERT_THAT(model, IsOk());
    ASSERT_THAT(model->vm->Resume(), IsOk());
    auto& vm = model->vm;
    auto& k = model->kernel;
    ProcessVmMemory pvm(vm->qemu_pid(), vm->host_ram());
    auto sched = k->FindSymbol("", "__schedule");
    ASSERT_THAT(sched, IsOk());
    const std::vector<patcher::CodeRange> busy = {{sched->address, sched->address + sched->size, "__schedule"}};

    patcher::GuestKernelStacks stacks(*k, *vm);
    stacks.Prepare();  // the hint, with the guest running
    ASSERT_THAT(vm->Pause(), IsOk());
    auto vcpus = vm->VcpuStates();
    Result<patcher::StackCheckReport> shared = InvalidArgument("not run"), serial = InvalidArgument("not run");
    std::uint64_t collect_us = 0;
    if (vcpus.ok()) {
      const vmm::PagingMode mode{(*vcpus)[0].cr3, (*vcpus)[0].la57(), (((*vcpus)[0].efer >> 11) & 1) != 0};
      shared = stacks.Check(*vm, mode, *vcpus, busy, collect_us);
      auto regions = k->StackRegions(pvm, *vcpus);
      if (regions.ok()) serial = patcher::CheckStacks(pvm, mode, *vcpus, *regions, busy);
    }
    ASSERT_THAT(vm->Resume(), IsOk());
    ASSERT_THAT(shared, IsOk());
    ASSERT_THAT(serial, IsOk());
    auto hits = [](const patcher::StackCheckReport& r) {
      std::set<std::tuple<int, std::string, std::uint64_t, std::string>> out;
      for (const auto& h : r.hits) out.emplace(h.tid, h.function, h.address, h.where);
      return out;
    };
    EXPECT_EQ(hits(*shared), hits(*serial));
    EXPECT_GE(shared->hits.size(), 340u);  // every sleep at least
    EXPECT_GE(shared->threads_scanned, std::size_t{patcher::GuestKernelStacks::kMinShared});
    EXPECT_EQ(shared->threads_scanned, serial->threads_scanned);
    EXPECT_EQ(shared->bytes_scanned, serial->bytes_scanned);
  }

  auto refused = Hvpatch({"--tries", "1", "apply", vm_->qmp_target(), PatchModule("hvp_sleep")});
  EXPECT_EQ(refused.exit_code, 3) << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("(sleep) in do_nanosleep"));
  auto a = Hvpatch({"--json", "apply", vm_->qmp_target(), PatchModule("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_GE(Json(a)["threads_scanned"].get<int>(), 340) << a.out;
  EXPECT_THAT(Guest("cat /proc/cmdline"), HasSubstr("live-patched"));
  auto r = Hvpatch({"revert", vm_->qmp_target(), "hvp_sample"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(Guest("cat /proc/cmdline"), Not(HasSubstr("live-patched")));
  Guest("kill $(cat /tmp/many); rm -f /tmp/many");
}

TEST_F(FastPathTest, AbsentAgentIsKnownFromQemuAndCostsNoTimeout) {
  const std::string why = "has not opened virtio-serial port 'org.hvpatch.agent.0'";
  auto a = Hvpatch({"--json", "apply", vm_->qmp_target(), PatchModule("hvp_meminfo")});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(Json(a)["confirmed"], false);
  EXPECT_THAT(Json(a)["confirmation"].get<std::string>(), HasSubstr(why));
  EXPECT_EQ(Guest("head -1 /proc/meminfo"), "HvpatchLivePatched: 1\n");

  auto l = Hvpatch({"--json", "list", vm_->qmp_target()});
  ASSERT_EQ(l.exit_code, 0) << l.err;
  EXPECT_THAT(Json(l)["agent_note"].get<std::string>(), HasSubstr(why));

  auto r = Hvpatch({"revert", vm_->qmp_target(), "hvp_meminfo"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(Guest("head -1 /proc/meminfo"), HasSubstr("MemTotal:"));
}

TEST_F(FastPathTest, SecondCommandUsesTheKallsymsCacheAndADamagedEntryIsRebuilt) {
  char t[] = "/tmp/hvpatch-fastpath-cache-XXXXXX";
  ASSERT_NE(mkdtemp(t), nullptr);
  const std::string state = t;
  auto first = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_THAT(Json(first)["symbol_cache"].get<std::string>(), StartsWith("miss: no cache entry"));
  EXPECT_THAT(Json(first)["ram_access"].get<std::string>(), StartsWith("mapped /proc/"));
  std::vector<std::string> entries;  // the kallsyms entry (the BTF answers have their own test)
  for (const auto& e : std::filesystem::directory_iterator(state + "/cache")) {
    if (e.path().filename().string().rfind("btf-", 0) != 0) entries.push_back(e.path());
  }
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_THAT(std::filesystem::path(entries[0]).filename().string(),
              StartsWith("kallsyms-" + Json(first)["build_id"].get<std::string>()));

  auto second = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(Json(second)["symbol_cache"], "hit");
  EXPECT_EQ(Json(second)["vmlinux_symbols"], Json(first)["vmlinux_symbols"]);

  {  // damage one byte in the middle of the entry
    std::fstream f(entries[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(std::filesystem::file_size(entries[0]) / 2));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(entries[0]) / 2));
    f.put(static_cast<char>(c ^ 0x20));
  }
  auto damaged = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  ASSERT_EQ(damaged.exit_code, 0) << damaged.err;
  EXPECT_THAT(Json(damaged)["symbol_cache"].get<std::string>(), HasSubstr("checksum mismatch"));
  EXPECT_EQ(Json(damaged)["vmlinux_symbols"], Json(first)["vmlinux_symbols"]);
  auto again = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  EXPECT_EQ(Json(again)["symbol_cache"], "hit");
  std::filesystem::remove_all(state);
}

// The BTF answers (patcher/btf_answers.h) across hvpatch processes: one cold apply records the
// questions of the model and of the commit, and later apply/revert/list/info answer all of theirs
// from the entry. A command that had to parse BTF would record (and save) a new answer, so an
// entry left byte for byte as it was means no command after the first parsed BTF.
TEST_F(FastPathTest, CommandsAfterTheFirstApplyAnswerBtfFromTheCache) {
  // The suite's own state directory: its ledger knows the arena the earlier tests' applies
  // mapped (a fresh one is refused, rightly: "another hvpatch state directory holds this VM's
  // patches"). Its cache goes, so the first apply below is cold.
  const std::string state = state_;
  std::filesystem::remove_all(state + "/cache");
  auto btf_path = [&]() -> std::filesystem::path {
    for (const auto& e : std::filesystem::directory_iterator(state + "/cache")) {
      if (e.path().filename().string().rfind("btf-", 0) == 0) return e.path();
    }
    return {};
  };
  auto btf_entry = [&]() -> std::string {
    std::ifstream f(btf_path(), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  auto first = Hvpatch({"--json", "apply", vm_->qmp_target(), PatchModule("hvp_sample")}, state);
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  const std::string entry = btf_entry();
  ASSERT_FALSE(entry.empty()) << "the cold apply saved no BTF answers";

  auto info = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(Json(info)["btf_cache"], "hit");
  for (const std::vector<std::string>& cmd : {std::vector<std::string>{"revert", vm_->qmp_target(), "hvp_sample"},
                                              {"apply", vm_->qmp_target(), PatchModule("hvp_sample")},
                                              {"list", vm_->qmp_target()},
                                              {"revert", vm_->qmp_target(), "hvp_sample"}}) {
    auto r = Hvpatch(cmd, state);
    ASSERT_EQ(r.exit_code, 0) << cmd[0] << ": " << r.err;
    EXPECT_EQ(btf_entry(), entry) << "'" << cmd[0] << "' parsed BTF and recorded new answers";
  }
  EXPECT_THAT(Guest("cat /proc/cmdline"), Not(HasSubstr("live-patched")));

  // A damaged entry: parsed again, with the reason, and rewritten.
  std::filesystem::resize_file(btf_path(), entry.size() - 5);
  auto damaged = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  ASSERT_EQ(damaged.exit_code, 0) << damaged.err;
  EXPECT_THAT(Json(damaged)["btf_cache"].get<std::string>(), HasSubstr("miss: BTF answers entry: checksum mismatch"));
  EXPECT_EQ(Json(damaged)["thread_size"], Json(info)["thread_size"]);
  auto again = Hvpatch({"--json", "info", vm_->qmp_target()}, state);
  EXPECT_EQ(Json(again)["btf_cache"], "hit");
}

}  // namespace
}  // namespace hv::testing
