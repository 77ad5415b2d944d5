// The QEMU backend of vmm::Vm on a real TCG guest (tests/harness): run state, vCPU state,
// page walk against QEMU's own gva2gpa, the host fast path against gdbstub reads, and a live
// code patch that the guest must execute (TCG drops its stale translation).
#include "vmm/qemu_vm.h"

#include <fcntl.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>
#include <string>

#include "base/hex.h"
#include "status_matchers.h"
#include "tests/harness/test_vm.h"
#include "vmm/page_walk.h"

namespace hv::vmm {
namespace {

using ::hv::testing::TestVm;
using ::testing::HasSubstr;
using ::testing::Not;

class QemuVmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    hv::testing::TestVmOptions o;
    o.agent = false;
    auto g = TestVm::Start(o);
    ASSERT_THAT(g, IsOk());
    guest_ = g->release();
    auto vm = QemuVm::Connect(guest_->qmp_path());
    ASSERT_THAT(vm, IsOk());
    vm_ = vm->release();
  }
  static void TearDownTestSuite() {
    delete vm_;
    vm_ = nullptr;
    if (guest_) {
      EXPECT_THAT(guest_->Stop(), IsOk());
    }
    delete guest_;
    guest_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(vm_, nullptr) << "the guest did not boot or the backend did not connect";
  }

  static bool QmpRunning() {
    auto st = vm_->qmp().Execute("query-status");
    EXPECT_THAT(st, IsOk());
    return st.ok() && (*st)["running"].get<bool>();
  }

  static std::uint64_t GuestSymbol(const std::string& name) {
    auto out = guest_->Check("grep ' " + name + "$' /proc/kallsyms");
    EXPECT_THAT(out, IsOk());
    if (!out.ok()) return 0;
    return std::strtoull(out->c_str(), nullptr, 16);
  }

  static PagingMode Mode(const VcpuState& v) {
    return PagingMode{v.cr3, v.la57(), ((v.efer >> 11) & 1) != 0};
  }

  static TestVm* guest_;
  static QemuVm* vm_;
};

TestVm* QemuVmTest::guest_ = nullptr;
QemuVm* QemuVmTest::vm_ = nullptr;

// The vCPU's per-CPU base, wherever SWAPGS left it.
std::uint64_t KernelGsBase(const VcpuState& v) {
  return v.gs_base >= 0xffff800000000000ull ? v.gs_base : v.kernel_gs_base;
}

TEST_F(QemuVmTest, PauseShowsInQueryStatusAndNestsAndKeepsAnOperatorPause) {
  ASSERT_TRUE(QmpRunning());
  ASSERT_THAT(vm_->Pause(), IsOk());
  EXPECT_FALSE(QmpRunning());
  ASSERT_THAT(vm_->Pause(), IsOk());
  ASSERT_THAT(vm_->Resume(), IsOk());
  EXPECT_FALSE(QmpRunning()) << "an inner Resume() must not restart the VM";
  ASSERT_THAT(vm_->Resume(), IsOk());
  EXPECT_TRUE(QmpRunning());
  EXPECT_THAT(vm_->Resume(), StatusIs(Code::kFailedPrecondition, HasSubstr("without a matching Pause")));

  // The operator pauses; our pause/resume must leave it paused.
  ASSERT_THAT(vm_->qmp().Execute("stop"), IsOk());
  ASSERT_THAT(vm_->Pause(), IsOk());
  ASSERT_THAT(vm_->Resume(), IsOk());
  EXPECT_FALSE(QmpRunning());
  auto running = vm_->Running();
  ASSERT_THAT(running, IsOk());
  EXPECT_FALSE(*running);
  ASSERT_THAT(vm_->qmp().Execute("cont"), IsOk());
  EXPECT_TRUE(QmpRunning());
  // Crash recovery: ForceResume restarts a VM whoever paused it, and ends our nesting.
  ASSERT_THAT(vm_->Pause(), IsOk());
  ASSERT_THAT(vm_->Pause(), IsOk());
  ASSERT_THAT(vm_->ForceResume(), IsOk());
  EXPECT_TRUE(QmpRunning());
  EXPECT_EQ(vm_->pause_depth(), 0);
  // The guest still answers after all that.
  EXPECT_THAT(guest_->Check("echo alive"), IsOk());
}

TEST_F(QemuVmTest, ReadsEveryVcpuState) {
  EXPECT_THAT(vm_->VcpuStates(), StatusIs(Code::kFailedPrecondition, HasSubstr("running")));
  ASSERT_THAT(vm_->Pause(), IsOk());
  auto states = vm_->VcpuStates();
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(states, IsOk());
  ASSERT_EQ(states->size(), 2u);
  for (const VcpuState& v : *states) {
    SCOPED_TRACE("vCPU " + std::to_string(v.index));
    EXPECT_NE(v.cr3 & pte::kAddrMask, 0u);
    EXPECT_TRUE(v.cr0 & (1u << 31)) << "paging on";
    EXPECT_TRUE(v.cr4 & (1u << 5)) << "PAE";
    EXPECT_TRUE(v.efer & (1u << 10)) << "long mode active";
    EXPECT_TRUE(v.efer & (1u << 11)) << "NX enabled";
    EXPECT_TRUE(v.rflags & 2) << "reserved bit 1 of RFLAGS";
    // An idle busybox guest's vCPUs almost always sit in the kernel; under load one may be
    // caught in user mode (the harness's command runner). Either way the state must be
    // consistent: kernel code segment and a kernel RIP, or user code segment and a user RIP.
    if (v.in_kernel()) {
      EXPECT_EQ(v.cs, 0x10u);
      EXPECT_GE(v.rip, 0xffffffff80000000ull) << Hex(v.rip);
    } else {
      EXPECT_EQ(v.cs, 0x33u) << "64-bit user code segment";
      EXPECT_LT(v.rip, 0x0000800000000000ull) << Hex(v.rip);
    }
    // The per-CPU base is in GS_BASE, or in KERNEL_GS_BASE when the vCPU stopped in the few
    // kernel instructions between a syscall/interrupt from user mode and its SWAPGS (seen under
    // load: gs_base 0 with cs 0x10).
    EXPECT_GE(KernelGsBase(v), 0xffff800000000000ull) << Hex(v.gs_base) << " " << Hex(v.kernel_gs_base);
  }
  EXPECT_NE(KernelGsBase((*states)[0]), KernelGsBase((*states)[1])) << "per-CPU areas differ";
}

TEST_F(QemuVmTest, PageWalkMatchesQemuGva2gpa) {
  const std::uint64_t f = GuestSymbol("cmdline_proc_show");
  ASSERT_NE(f, 0u);
  ASSERT_THAT(vm_->Pause(), IsOk());
  auto states = vm_->VcpuStates();
  ASSERT_THAT(states, IsOk());
  auto t = TranslateVirt(*vm_, Mode((*states)[0]), f);
  auto hmp = vm_->qmp().Hmp("gva2gpa " + Hex(f));
  std::vector<std::uint8_t> entry(5);
  Status read = ReadVirt(*vm_, Mode((*states)[0]), f, entry);
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(t, IsOk());
  ASSERT_THAT(hmp, IsOk());
  std::smatch m;
  ASSERT_TRUE(std::regex_search(*hmp, m, std::regex("gpa: (0x[0-9a-f]+)"))) << *hmp;
  EXPECT_EQ(t->gpa, std::stoull(m[1].str(), nullptr, 16)) << *hmp;
  EXPECT_FALSE(t->nx) << "kernel text is executable";
  EXPECT_FALSE(t->user);
  // The 6.1 kernel starts each traceable function with the 5-byte ftrace nop.
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(HexBytes(entry), "0f 1f 44 00 00");
}

TEST_F(QemuVmTest, FastPathMatchesGdbstubOver16MiB) {
  const auto ram = vm_->RamRanges();
  ASSERT_FALSE(ram.empty());
  EXPECT_EQ(ram.front().start, 0u);
  std::uint64_t total = 0;
  for (const PhysRange& r : ram) total += r.size;
  EXPECT_EQ(total, 512ull << 20);

  ASSERT_THAT(vm_->Pause(), IsOk());
  // 16 MiB from where the kernel image is usually loaded (physical KASLR moves it around).
  const std::uint64_t base = 16ull << 20;
  std::vector<std::uint8_t> bulk(16u << 20);
  Status s = vm_->ReadPhys(base, bulk);
  std::vector<std::uint8_t> sample(512);
  int nonzero = 0;
  for (std::uint64_t off = 0; off < bulk.size() && s.ok(); off += 1u << 20) {
    const std::uint64_t at = off + (off >> 8) % 0x1000;  // vary the offset within pages
    s = vm_->gdb().ReadMemory(base + at, sample);
    if (!s.ok()) break;
    EXPECT_TRUE(std::equal(sample.begin(), sample.end(), bulk.begin() + static_cast<std::ptrdiff_t>(at)))
        << "at gpa " << Hex(base + at);
    nonzero += std::any_of(sample.begin(), sample.end(), [](std::uint8_t c) { return c != 0; });
  }
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(s, IsOk());
  EXPECT_GT(nonzero, 0) << "all samples zero: the comparison would prove nothing";
  // Past the end of RAM is refused, not read from some other host memory.
  std::vector<std::uint8_t> one(1);
  EXPECT_THAT(vm_->ReadPhys(512ull << 20, one), StatusIs(Code::kInvalidArgument, HasSubstr("0x20000000 is not guest RAM")));
}

TEST_F(QemuVmTest, ArenaIsFoundAndWritable) {
  auto a = vm_->Arena();
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->size, 2u << 20);
  EXPECT_EQ(a->bar_gpa % (2u << 20), 0u);
  EXPECT_EQ(a->backing_path, guest_->arena_path());
  EXPECT_THAT(a->pci_address, ::testing::MatchesRegex("00:[0-9a-f]{2}\\.0"));
  const std::vector<std::uint8_t> data = {0xde, 0xad, 0xbe, 0xef, 0x01, 0x02};
  ASSERT_THAT(vm_->WritePhys(a->bar_gpa + 0x1000, data), IsOk());
  std::vector<std::uint8_t> back(data.size());
  ASSERT_THAT(vm_->ReadPhys(a->bar_gpa + 0x1000, back), IsOk());
  EXPECT_EQ(back, data);
  // The bytes are in the backing file: the arena is the device's memory, not a copy.
  const int fd = open(a->backing_path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<std::uint8_t> file(data.size());
  EXPECT_EQ(pread(fd, file.data(), file.size(), 0x1000), static_cast<ssize_t>(file.size()));
  close(fd);
  EXPECT_EQ(file, data);
}

TEST_F(QemuVmTest, WriteCodeRedirectsAndRestoresCmdline) {
  const std::uint64_t f = GuestSymbol("cmdline_proc_show");
  const std::uint64_t v = GuestSymbol("version_proc_show");
  ASSERT_NE(f, 0u);
  ASSERT_NE(v, 0u);
  // Under TCG code writes must go through QEMU (the gdbstub), never straight into RAM.
  EXPECT_FALSE(vm_->kvm());
  EXPECT_STREQ(vm_->code_write_path(), "gdbstub");
  // Run the original once so TCG has translated it: the patch must displace that translation.
  auto before = guest_->Check("cat /proc/cmdline");
  ASSERT_THAT(before, IsOk());
  EXPECT_THAT(*before, HasSubstr("console=ttyS0"));

  const std::int64_t rel = static_cast<std::int64_t>(v) - static_cast<std::int64_t>(f + 5);
  std::vector<std::uint8_t> jmp = {0xe9};
  for (int i = 0; i < 4; ++i) jmp.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(rel) >> (8 * i)));

  EXPECT_THAT(vm_->WriteCode(f, jmp), StatusIs(Code::kFailedPrecondition, HasSubstr("running")));
  ASSERT_THAT(vm_->Pause(), IsOk());
  auto states = vm_->VcpuStates();
  ASSERT_THAT(states, IsOk());
  std::vector<std::uint8_t> orig(5);
  ASSERT_THAT(ReadVirt(*vm_, Mode((*states)[0]), f, orig), IsOk());
  ASSERT_EQ(HexBytes(orig), "0f 1f 44 00 00");
  Status w = vm_->WriteCode(f, jmp);
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(w, IsOk());

  auto patched = guest_->Check("cat /proc/cmdline");
  ASSERT_THAT(patched, IsOk());
  EXPECT_THAT(*patched, HasSubstr("Linux version"));
  EXPECT_THAT(*patched, Not(HasSubstr("console=ttyS0")));

  ASSERT_THAT(vm_->Pause(), IsOk());
  w = vm_->WriteCode(f, orig);
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(w, IsOk());
  auto restored = guest_->Check("cat /proc/cmdline");
  ASSERT_THAT(restored, IsOk());
  EXPECT_THAT(*restored, HasSubstr("console=ttyS0"));
  EXPECT_THAT(*restored, Not(HasSubstr("Linux version")));
}

TEST_F(QemuVmTest, ReconnectingToAnOperatorPausedVmLeavesItPaused) {
  // Runs last but one: it replaces the suite's connection (and its gdbserver) with a new one.
  ASSERT_THAT(vm_->qmp().Execute("stop"), IsOk());
  delete vm_;
  vm_ = nullptr;
  auto vm = QemuVm::Connect(guest_->qmp_path());
  ASSERT_THAT(vm, IsOk());
  vm_ = vm->release();
  EXPECT_FALSE(QmpRunning()) << "connecting (and the gdbstub attach) must not resume it";
  ASSERT_THAT(vm_->Pause(), IsOk());
  auto states = vm_->VcpuStates();
  ASSERT_THAT(vm_->Resume(), IsOk());
  ASSERT_THAT(states, IsOk());
  EXPECT_EQ(states->size(), 2u);
  EXPECT_FALSE(QmpRunning());
  ASSERT_THAT(vm_->qmp().Execute("cont"), IsOk());
  EXPECT_THAT(guest_->Check("echo alive"), IsOk());
}

TEST_F(QemuVmTest, IdentityAndDescription) {
  EXPECT_THAT(vm_->Identity(), HasSubstr("qmp.sock"));  // the test guest has no -uuid
  EXPECT_THAT(vm_->Describe(), HasSubstr("QEMU pid " + std::to_string(guest_->qemu_pid())));
  EXPECT_EQ(vm_->qemu_pid(), guest_->qemu_pid());
}

TEST(VmOpenTest, RefusesUnknownTargets) {
  EXPECT_THAT(Open("qmp:"), StatusIs(Code::kInvalidArgument, HasSubstr("no socket path")));
  EXPECT_THAT(Open("qmp:/nonexistent/qmp.sock"),
              StatusIs(Code::kUnavailable, HasSubstr("'/nonexistent/qmp.sock'")));
  EXPECT_THAT(Open("vmm:/x.sock"), StatusIs(Code::kUnimplemented, HasSubstr("'vmm:/x.sock'")));
  // Any other target is a libvirt domain name: here on a connection with no daemon behind it.
  OpenOptions o;
  o.uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
  EXPECT_THAT(Open("some-domain", o), StatusIs(Code::kUnavailable, HasSubstr("connecting to libvirt at")));
}

}  // namespace
}  // namespace hv::vmm
