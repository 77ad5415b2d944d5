// Issue 11 on a real TCG guest (-cpu max): patches whose code needs the guest kernel's own module
// structures. The real `hvpatch` binary applies them; what the guest prints is the proof, and an
// in-guest insmod of the same .ko (the oracle) must print the same. The module structures
// (modules list, module_bug_list, both copies of mod_tree, its bounds) are read from the host,
// through our own connection to QEMU and the guest's BTF, before the apply and after the revert.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <thread>

#include "patcher/commit.h"
#include "patcher/guest_kernel.h"
#include "patcher/shadow_module.h"
#include "patcher/static_keys.h"
#include "status_matchers.h"
#include "tests/harness/guest_output.h"
#include "tests/harness/base64.h"
#include "tests/harness/run_program.h"
#include "tests/harness/module_structures.h"
#include "tests/harness/test_vm.h"
#include "tests/integration/patch/hvpatch_process.h"
#include "vmm/vm.h"

namespace hv {
namespace {

using ::hv::testing::HvpatchProcess;
using ::hv::testing::HvpatchRun;
using ::hv::testing::TestVm;
using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

std::string Describe(const HvpatchRun& r) {
  return "exit " + std::to_string(r.exit_code) + " signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

class ShadowIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(fs::exists(testing::HvpatchBinary())) << "hvpatch not found at '" << testing::HvpatchBinary() << "'";
    testing::TestVmOptions o;
    o.extra_qemu_args = {"-cpu", "max"};  // SMAP and SMEP under TCG, as the issue asks
    auto g = TestVm::Start(o);
    ASSERT_THAT(g, IsOk());
    guest_ = g->release();
    auto cmdline = guest_->Check("cat /proc/cmdline");
    ASSERT_THAT(cmdline, IsOk());
    boot_cmdline_ = *cmdline;
    char tmpl[] = "/tmp/hvpatch-shadow-state-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    state_dir_ = tmpl;
  }
  static void TearDownTestSuite() {
    if (guest_) {
      EXPECT_THAT(guest_->Stop(), IsOk());
    }
    delete guest_;
    guest_ = nullptr;
    std::error_code ec;
    if (!state_dir_.empty()) fs::remove_all(state_dir_, ec);
  }
  void TearDown() override {
    if (guest_) Cleanup();
    std::error_code ec;
    if (!scratch_.empty()) fs::remove_all(scratch_, ec);  // logs, built samples
  }
  void Cleanup() {
    // Leave the guest as the next test expects it: nothing applied, nothing loaded.
    for (const char* name : {"hvp_this_module", "hvp_user_read", "hvp_warn", "hvp_static_key", "hvp_static_call", "livepatch_sample",
                             "livepatch_shadow_fix2", "livepatch_shadow_fix1"}) {
      HvpatchRun r = Hv({"revert", Domain(), name});
      (void)r;
    }
    (void)guest_->Check("echo 0 > /proc/sys/net/core/rps_sock_flow_entries; "
                        "echo 0 > /sys/kernel/tracing/events/power/cpu_frequency/enable; "
                        "for p in hvp_static_key hvp_static_key_version hvp_static_call; do "
                        "[ -e /sys/kernel/livepatch/$p ] && echo 0 > /sys/kernel/livepatch/$p/enabled; "
                        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/$p ] || break; sleep 0.2; done; "
                        "rmmod $p 2>/dev/null; done; true");
  }

  static std::string Domain() { return guest_->qmp_target(); }

  HvpatchRun Hv(const std::vector<std::string>& args, int timeout_s = 300) {
    std::vector<std::string> full = {"--state-dir", state_dir_};
    full.insert(full.end(), args.begin(), args.end());
    HvpatchProcess p(full, {}, scratch_ + "/hv" + std::to_string(runs_++));
    return p.Wait(timeout_s);
  }

  static std::string Guest(const std::string& script, int timeout_s = 60) {
    return testing::OutputOrFailure(guest_->Check(script, timeout_s));
  }

  // The guest's module structures, read from the host in a pause of our own.
  static patcher::ModuleStructures Structures() {
    auto read = testing::ReadGuestModuleStructures(Domain());
    if (!read.ok()) {
      ADD_FAILURE() << read.status().message();
      return {};
    }
    return *read;
  }

  // vmlinux's static key `rfs_needed` as the guest holds it, read from the host in a pause of our
  // own: its type word (entries or node list, with the type bits) and its node list.
  struct KeyView {
    patcher::StaticKeyState state;
    std::uint64_t key = 0;
    std::int32_t enabled = 0;
  };
  static KeyView RfsNeeded() { return KeyOf("rfs_needed", "", ""); }
  // The static key at `symbol` (+ the offset of `member` in `type`, when given).
  static KeyView KeyOf(const std::string& symbol, const std::string& type, const std::string& member) {
    KeyView out;
    auto vm = vmm::Open(Domain());
    if (!vm.ok()) {
      ADD_FAILURE() << "opening the VM: " << vm.status().message();
      return out;
    }
    if (Status s = (*vm)->Pause(); !s.ok()) {
      ADD_FAILURE() << s.message();
      return out;
    }
    Status read = [&]() -> Status {
      HV_ASSIGN_OR_RETURN(auto vcpus, (*vm)->VcpuStates());
      patcher::GuestKernelOptions opts;
      opts.walk_tasks = false;
      HV_ASSIGN_OR_RETURN(auto kernel, patcher::GuestKernel::Build(**vm, vcpus, opts));
      HV_ASSIGN_OR_RETURN(auto layout, patcher::StaticKeyLayout::Read(kernel->btf(), *kernel));
      HV_ASSIGN_OR_RETURN(auto sym, kernel->Resolve(symbol, "vmlinux", 0));
      std::uint64_t off = 0;
      if (!type.empty()) {
        HV_ASSIGN_OR_RETURN(off, kernel->btf().Offset(type, member));
      }
      patcher::VmKernelWords mem(**vm, kernel->paging());
      out.key = sym.address + off;
      HV_ASSIGN_OR_RETURN(std::uint32_t enabled, mem.Read32(out.key + layout.key_enabled));
      out.enabled = static_cast<std::int32_t>(enabled);
      HV_ASSIGN_OR_RETURN(out.state, patcher::ReadStaticKey(mem, layout, out.key));
      return Status::Ok();
    }();
    EXPECT_THAT((*vm)->Resume(), IsOk());
    if (!read.ok()) ADD_FAILURE() << "reading the static key " << symbol << ": " << read.message();
    return out;
  }
  static bool Linked(const KeyView& k) { return (k.state.type & 2) != 0; }

  // Kernel log lines that report a crash or a warning: none may appear.
  static std::string Oopses() {
    return Trim(Guest("dmesg | grep -E 'Oops|BUG:|general protection|Call Trace|WARNING:' || true"));
  }

  void SetUp() override {
    ASSERT_NE(guest_, nullptr);
    char tmpl[] = "/tmp/hvpatch-shadow-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    scratch_ = tmpl;
    Guest("dmesg -c > /dev/null");  // each test reads the kernel log it caused
  }

  static TestVm* guest_;
  static std::string boot_cmdline_;
  static std::string state_dir_;
  std::string scratch_;
  int runs_ = 0;
};

TestVm* ShadowIntegrationTest::guest_ = nullptr;
std::string ShadowIntegrationTest::boot_cmdline_;
std::string ShadowIntegrationTest::state_dir_;

// THIS_MODULE, module kallsyms, lsmod, rmmod, and the structures after revert (acceptance 1, 4).
TEST_F(ShadowIntegrationTest, ThisModuleIsTheShadowModuleAndRevertRestoresTheModuleStructures) {
  const patcher::ModuleStructures before = Structures();
  ASSERT_FALSE(before.modules.empty()) << "the test guest loads its virtio modules at boot";

  HvpatchRun apply = Hv({"apply", Domain(), testing::PatchModule("hvp_this_module")});
  ASSERT_EQ(apply.exit_code, 0) << Describe(apply);
  const std::string line = Trim(Guest("cat /proc/cmdline"));
  EXPECT_EQ(line,
            "hvp_this_module: name=hvp_this_module refcount=1 live=1 self=hvp_this_module_cmdline_show "
            "[hvp_this_module]");
  const std::string lsmod = Guest("lsmod");
  EXPECT_THAT(lsmod, HasSubstr("hvp_this_module")) << lsmod;
  EXPECT_THAT(Guest("grep '^hvp_this_module ' /proc/modules"), HasSubstr(" 1 hvp_this_module, Live 0x"));
  EXPECT_THAT(Guest("grep hvp_this_module_cmdline_show /proc/kallsyms"),
              HasSubstr(" t hvp_this_module_cmdline_show\t[hvp_this_module]"));
  // The guest cannot remove it, not even by force.
  EXPECT_THAT(Guest("rmmod hvp_this_module 2>&1; echo rc=$?"), HasSubstr("rc=1"));
  EXPECT_THAT(Guest("rmmod -f hvp_this_module 2>&1; echo rc=$?"), HasSubstr("rc=1"));
  EXPECT_THAT(Guest("lsmod"), HasSubstr("hvp_this_module"));

  const patcher::ModuleStructures linked = Structures();
  ASSERT_EQ(linked.modules.size(), before.modules.size() + 1);
  EXPECT_EQ(linked.bug_modules.size(), before.bug_modules.size() + 1);
  EXPECT_EQ(linked.tree[0].size(), before.tree[0].size() + 1);
  EXPECT_EQ(linked.tree[1].size(), before.tree[1].size() + 1);
  EXPECT_LT(linked.addr_min, before.addr_min) << "the arena lies below the module area";

  HvpatchRun revert = Hv({"revert", Domain(), "hvp_this_module"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_THAT(Guest("cat /proc/modules"), Not(HasSubstr("hvp_this_module")));
  EXPECT_EQ(Structures(), before);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  // The oracle: the same module loaded in the guest prints the same line.
  Guest("insmod /patches/hvp_this_module.ko");
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), line);
  Guest("echo 0 > /sys/kernel/livepatch/hvp_this_module/enabled; "
        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/hvp_this_module ] || break; sleep 0.2; done; "
        "rmmod hvp_this_module");
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// A user-pointer read in new code (acceptance 1): __ex_table found through the shadow module
// (bad pointer: -EFAULT, no oops) and STAC applied from .altinstructions for this SMAP guest
// (valid pointer: read).
TEST_F(ShadowIntegrationTest, UserPointerReadFaultsCleanlyAndWorksUnderSmap) {
  ASSERT_EQ(Trim(Guest("grep -qw smap /proc/cpuinfo && echo smap")), "smap") << "-cpu max gives SMAP";
  // Unpatched, /dev/null's write never reads the buffer.
  ASSERT_EQ(Trim(Guest("uptr bad")), "rc=4 errno=0");
  ASSERT_EQ(Trim(Guest("uptr valid")), "rc=4 errno=0");
  const patcher::ModuleStructures before = Structures();

  HvpatchRun apply = Hv({"apply", Domain(), testing::PatchModule("hvp_user_read")});
  ASSERT_EQ(apply.exit_code, 0) << Describe(apply);
  EXPECT_EQ(Trim(Guest("uptr bad")), "rc=-1 errno=14");
  EXPECT_EQ(Trim(Guest("uptr valid")), "rc=1 errno=0");
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  HvpatchRun revert = Hv({"revert", Domain(), "hvp_user_read"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Trim(Guest("uptr bad")), "rc=4 errno=0");
  EXPECT_EQ(Structures(), before);

  // The oracle: in-guest insmod behaves the same.
  Guest("insmod /patches/hvp_user_read.ko");
  EXPECT_EQ(Trim(Guest("uptr bad")), "rc=-1 errno=14");
  EXPECT_EQ(Trim(Guest("uptr valid")), "rc=1 errno=0");
  Guest("echo 0 > /sys/kernel/livepatch/hvp_user_read/enabled; "
        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/hvp_user_read ] || break; sleep 0.2; done; "
        "rmmod hvp_user_read");
  EXPECT_EQ(Trim(Guest("uptr bad")), "rc=4 errno=0");
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// The WARN report of one `cat /proc/cmdline` through a patched function: the lines from the
// "cut here" marker to the end trace.
std::string WarnReport(const std::string& dmesg) {
  const auto begin = dmesg.find("------------[ cut here ]------------");
  const auto end = dmesg.find("---[ end trace", begin == std::string::npos ? 0 : begin);
  if (begin == std::string::npos || end == std::string::npos) return "";
  return dmesg.substr(begin, end - begin);
}

// Without timestamps, addresses and the task: what must be the same for hvpatch and insmod.
std::string WarnSummary(const std::string& report) {
  std::string out;
  std::regex warning("WARNING: CPU: [0-9]+ PID: [0-9]+ at (\\S+) (\\S+)\\+0x[0-9a-f]+/0x[0-9a-f]+ \\[(\\w+)\\]");
  std::smatch m;
  if (std::regex_search(report, m, warning)) out = m[1].str() + " " + m[2].str() + " [" + m[3].str() + "]";
  return out;
}

// A WARN_ON_ONCE in new code (acceptance 1): report_bug() finds it through module_bug_list,
// prints it once (the once flag is written in the writable table), names the new function, the
// backtrace walks through it with the patch's ORC, and the guest goes on.
TEST_F(ShadowIntegrationTest, WarnOnceInNewCodeIsReportedOnceAndNamesTheFunction) {
  HvpatchRun apply = Hv({"apply", Domain(), testing::PatchModule("hvp_warn")});
  ASSERT_EQ(apply.exit_code, 0) << Describe(apply);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_warn: warned once");
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_warn: warned once");
  const std::string dmesg = Guest("dmesg");
  EXPECT_EQ(Trim(Guest("dmesg | grep -c 'WARNING: CPU' || true")), "1") << dmesg;
  const std::string report = WarnReport(dmesg);
  ASSERT_NE(report, "") << dmesg;
  EXPECT_THAT(report, HasSubstr("hvp_warn_cmdline_show+0x"));
  EXPECT_THAT(report, HasSubstr("RIP: 0010:hvp_warn_cmdline_show+0x"));
  // The unwinder walked through the new function: the callers are reliable frames, not guesses.
  EXPECT_THAT(report, HasSubstr(" seq_read_iter+0x")) << report;
  EXPECT_THAT(report, Not(HasSubstr("? seq_read_iter"))) << report;
  EXPECT_THAT(report, Not(HasSubstr("Oops")));
  const std::string summary = WarnSummary(report);
  EXPECT_THAT(summary, HasSubstr("hvp_warn_cmdline_show [hvp_warn]")) << report;

  HvpatchRun revert = Hv({"revert", Domain(), "hvp_warn"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);

  // The oracle: the same module loaded in the guest warns the same way.
  Guest("dmesg -c > /dev/null; insmod /patches/hvp_warn.ko");
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline; cat /proc/cmdline")), "hvp_warn: warned once\nhvp_warn: warned once");
  const std::string oracle = WarnReport(Guest("dmesg"));
  EXPECT_EQ(WarnSummary(oracle), summary) << oracle;
  EXPECT_THAT(oracle, HasSubstr(" seq_read_iter+0x"));
  Guest("echo 0 > /sys/kernel/livepatch/hvp_warn/enabled; "
        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/hvp_warn ] || break; sleep 0.2; done; rmmod hvp_warn");
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
}

// A branch on a vmlinux static key in new code (issue 11: static keys): the patch's sites start
// in the key's state at the apply, and follow when the guest switches the key afterwards
// (/proc/sys/net/core/rps_sock_flow_entries switches `rfs_needed`), through the guest's own
// jump_label_update() and text_poke() on arena code. The revert leaves the key as it was.
TEST_F(ShadowIntegrationTest, StaticKeyBranchFollowsTheGuestsToggles) {
  const std::string off = "hvp_static_key: unlikely=off likely=off";
  const std::string on = "hvp_static_key: unlikely=on likely=on";
  auto set_key = [](bool v) { Guest(std::string("echo ") + (v ? "256" : "0") + " > /proc/sys/net/core/rps_sock_flow_entries"); };
  set_key(false);
  const KeyView before = RfsNeeded();
  ASSERT_NE(before.key, 0u);
  ASSERT_EQ(before.enabled, 0);
  const patcher::ModuleStructures modules_before = Structures();

  HvpatchRun apply = Hv({"apply", Domain(), testing::PatchModule("hvp_static_key")});
  ASSERT_EQ(apply.exit_code, 0) << Describe(apply);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), off);
  // Linked as jump_label_add_module() links: our node first (mod = the shadow module), then, if
  // the key was not linked before, a node for vmlinux's own entries (mod NULL).
  const KeyView linked = RfsNeeded();
  ASSERT_TRUE(Linked(linked)) << std::hex << linked.state.type;
  ASSERT_GE(linked.state.nodes.size(), 2u);
  EXPECT_EQ(linked.state.node_mods[0], Structures().modules.front()) << "our node's module is the shadow module";
  if (!Linked(before)) {
    ASSERT_EQ(linked.state.nodes.size(), 2u);
    EXPECT_EQ(linked.state.node_mods[1], 0u);
    EXPECT_EQ(linked.state.node_entries[1], before.state.type & ~std::uint64_t{3}) << "vmlinux's entries";
  } else {
    EXPECT_EQ(linked.state.nodes.size(), before.state.nodes.size() + 1);
  }

  set_key(true);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), on);
  set_key(false);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), off);
  set_key(true);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), on);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  // Reverted while on; applied again while on: the sites start as jumps where the key says so.
  HvpatchRun revert = Hv({"revert", Domain(), "hvp_static_key"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  HvpatchRun again = Hv({"apply", Domain(), testing::PatchModule("hvp_static_key")});
  ASSERT_EQ(again.exit_code, 0) << Describe(again);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), on);
  set_key(false);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), off);
  HvpatchRun revert2 = Hv({"revert", Domain(), "hvp_static_key"});
  ASSERT_EQ(revert2.exit_code, 0) << Describe(revert2);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  // The key's structures and the module structures are as before the apply.
  const KeyView after = RfsNeeded();
  EXPECT_EQ(after.state, before.state) << std::hex << before.state.type << " -> " << after.state.type;
  EXPECT_EQ(after.enabled, 0);
  EXPECT_EQ(Structures(), modules_before);

  // The oracle: the same module loaded in the guest follows the key the same way.
  Guest("insmod /patches/hvp_static_key.ko");
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), off);
  set_key(true);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), on);
  set_key(false);
  Guest("echo 0 > /sys/kernel/livepatch/hvp_static_key/enabled; "
        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/hvp_static_key ] || break; sleep 0.2; done; "
        "rmmod hvp_static_key");
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(RfsNeeded().state, before.state) << "the kernel folds the key back after an in-guest unload too";
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// The tombstone rule (docs/shadow-module.md): a guest module that uses the same key joins its
// node list while the patch is applied; the revert must not leave a node in arena memory that
// the guest would kfree() once it is last, so hvpatch's two nodes stay on the list for good (its
// own one inert). The guest then switches the key and unloads its module without an oops, and
// a later apply of the patch links beside the tombstone.
TEST_F(ShadowIntegrationTest, StaticKeyRevertLeavesATombstoneWhenTheGuestJoinedTheKey) {
  auto set_key = [](bool v) { Guest(std::string("echo ") + (v ? "256" : "0") + " > /proc/sys/net/core/rps_sock_flow_entries"); };
  set_key(false);
  HvpatchRun apply = Hv({"apply", Domain(), testing::PatchModule("hvp_static_key")});
  ASSERT_EQ(apply.exit_code, 0) << Describe(apply);
  const KeyView ours = RfsNeeded();
  ASSERT_TRUE(Linked(ours));
  const std::uint64_t own_node = ours.state.nodes.front();
  const std::uint64_t shadow_module = ours.state.node_mods.front();

  ASSERT_EQ(Trim(Guest("insmod /patches/hvp_static_key_version.ko; echo rc=$?")), "rc=0");
  EXPECT_EQ(Trim(Guest("cat /proc/version")), "hvp_static_key_version: unlikely=off likely=off");
  const KeyView joined = RfsNeeded();
  ASSERT_EQ(joined.state.nodes.size(), ours.state.nodes.size() + 1) << "the guest's node, first";

  HvpatchRun revert = Hv({"revert", Domain(), "hvp_static_key"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  const KeyView tomb = RfsNeeded();
  ASSERT_TRUE(Linked(tomb));
  ASSERT_EQ(tomb.state.nodes, joined.state.nodes) << "no node left the list";
  const auto at = std::find(tomb.state.nodes.begin(), tomb.state.nodes.end(), own_node) - tomb.state.nodes.begin();
  ASSERT_LT(static_cast<std::size_t>(at), tomb.state.nodes.size());
  EXPECT_EQ(tomb.state.node_entries[at], 0u) << "our node is inert";
  EXPECT_EQ(tomb.state.node_mods[at], shadow_module);
  EXPECT_THAT(Guest("cat /proc/modules"), Not(HasSubstr("hvp_static_key ")));

  set_key(true);
  EXPECT_EQ(Trim(Guest("cat /proc/version")), "hvp_static_key_version: unlikely=on likely=on");
  set_key(false);
  Guest("echo 0 > /sys/kernel/livepatch/hvp_static_key_version/enabled; "
        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/hvp_static_key_version ] || break; sleep 0.2; done; "
        "rmmod hvp_static_key_version");
  EXPECT_THAT(Guest("cat /proc/version"), HasSubstr("Linux version"));
  // The guest freed its own node only: ours (tombstone + vmlinux's) stay, the key stays linked.
  const KeyView left = RfsNeeded();
  ASSERT_TRUE(Linked(left));
  EXPECT_EQ(left.state.nodes.size(), 2u);
  EXPECT_EQ(left.state.nodes.front(), own_node);
  set_key(true);
  set_key(false);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  // A later apply links beside the tombstone, and its revert takes only its own node.
  HvpatchRun again = Hv({"apply", Domain(), testing::PatchModule("hvp_static_key")});
  ASSERT_EQ(again.exit_code, 0) << Describe(again);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_static_key: unlikely=off likely=off");
  set_key(true);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_static_key: unlikely=on likely=on");
  set_key(false);
  EXPECT_EQ(RfsNeeded().state.nodes.size(), 3u);
  HvpatchRun revert2 = Hv({"revert", Domain(), "hvp_static_key"});
  ASSERT_EQ(revert2.exit_code, 0) << Describe(revert2);
  EXPECT_EQ(RfsNeeded().state, left.state);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// A static call in new code (issue 11: static calls): a tracepoint call is a static branch on the
// tracepoint's key around an inline static call. hvpatch leaves the patch's static call sites to
// the trampoline; enabling the event in the guest switches the key (the patch's site with it)
// and retargets the static call with static_call_update(): the event fired by the new code must
// reach the trace buffer, as with an in-guest insmod, and stop when the event is disabled.
TEST_F(ShadowIntegrationTest, StaticCallInNewCodeReachesTheTargetTheGuestSets) {
  const std::string events = "/sys/kernel/tracing/events/power/cpu_frequency/enable";
  const std::string count = "grep -c 'cpu_frequency: state=4242 cpu_id=7' /sys/kernel/tracing/trace || true";
  Guest("echo 0 > " + events + "; echo > /sys/kernel/tracing/trace");
  const KeyView before = KeyOf("__tracepoint_cpu_frequency", "tracepoint", "key");
  ASSERT_NE(before.key, 0u);
  ASSERT_EQ(before.enabled, 0);

  HvpatchRun apply = Hv({"apply", Domain(), testing::PatchModule("hvp_static_call")});
  ASSERT_EQ(apply.exit_code, 0) << Describe(apply);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_static_call: fired cpu_frequency");
  EXPECT_EQ(Trim(Guest(count)), "0") << "the event is off: the branch skips the call";
  Guest("echo 1 > " + events);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_static_call: fired cpu_frequency");
  EXPECT_EQ(Trim(Guest(count)), "1") << Guest("cat /sys/kernel/tracing/trace | tail -5");
  Guest("echo 0 > " + events);
  Guest("cat /proc/cmdline");
  EXPECT_EQ(Trim(Guest(count)), "1");
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");

  HvpatchRun revert = Hv({"revert", Domain(), "hvp_static_call"});
  ASSERT_EQ(revert.exit_code, 0) << Describe(revert);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(KeyOf("__tracepoint_cpu_frequency", "tracepoint", "key").state, before.state);

  // The oracle: in-guest insmod, same trace.
  Guest("echo > /sys/kernel/tracing/trace; insmod /patches/hvp_static_call.ko");
  Guest("cat /proc/cmdline");
  EXPECT_EQ(Trim(Guest(count)), "0");
  Guest("echo 1 > " + events);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "hvp_static_call: fired cpu_frequency");
  EXPECT_EQ(Trim(Guest(count)), "1");
  Guest("echo 0 > " + events + "; echo 0 > /sys/kernel/livepatch/hvp_static_call/enabled; "
        "for i in $(seq 50); do [ -e /sys/kernel/livepatch/hvp_static_call ] || break; sleep 0.2; done; "
        "rmmod hvp_static_call");
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

// Copies a host file into the guest, through the command channel, in chunks.
void PushFile(TestVm& guest, const std::string& host_path, const std::string& guest_path) {
  std::ifstream f(host_path, std::ios::binary);
  ASSERT_TRUE(f) << "cannot open " << host_path;
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_THAT(guest.Check("rm -f " + guest_path), IsOk());
  constexpr std::size_t kChunk = 24 * 1024;
  for (std::size_t off = 0; off < bytes.size(); off += kChunk) {
    const std::string b64 = testing::Base64Encode(std::string_view(bytes).substr(off, kChunk));
    ASSERT_THAT(guest.Check("echo " + b64 + " | base64 -d >> " + guest_path), IsOk());
  }
  auto size = guest.Check("wc -c < " + guest_path);
  ASSERT_THAT(size, IsOk());
  ASSERT_EQ(Trim(*size), std::to_string(bytes.size()));
}

// Acceptance 2: the kernel's own samples/livepatch modules, built now by kbuild from Debian's
// linux-source-6.1 (the guest's version), apply from the host with their in-guest effect;
// callbacks are refused by name. The shadow-variable fixes patch a module loaded in the guest
// and call the guest's klp_shadow_* API.
TEST_F(ShadowIntegrationTest, KernelLivepatchSamplesApplyAsInGuest) {
  const std::string samples = scratch_ + "/samples";
  const std::string script = std::string(HVPATCH_SOURCE_DIR) + "/tests/integration/shadow/build_livepatch_samples.sh";
  auto built = testing::RunProgram({script, testing::ImagesDir(), samples}, {}, 900);
  ASSERT_THAT(built, IsOk());
  ASSERT_EQ(built->exit_code, 0) << built->out << built->err;
  auto ko = [&](const std::string& name) { return samples + "/" + name + ".ko"; };

  // livepatch-sample: /proc/cmdline says so.
  HvpatchRun sample = Hv({"apply", Domain(), ko("livepatch-sample")});
  ASSERT_EQ(sample.exit_code, 0) << Describe(sample);
  EXPECT_EQ(Trim(Guest("cat /proc/cmdline")), "this has been live patched");
  HvpatchRun unsample = Hv({"revert", Domain(), "livepatch_sample"});
  ASSERT_EQ(unsample.exit_code, 0) << Describe(unsample);
  EXPECT_EQ(Guest("cat /proc/cmdline"), boot_cmdline_);

  // livepatch-callbacks-demo: callbacks run guest code on the host's behalf: refused by name.
  HvpatchRun callbacks = Hv({"apply", Domain(), ko("livepatch-callbacks-demo")});
  EXPECT_EQ(callbacks.exit_code, 1) << Describe(callbacks);
  EXPECT_THAT(callbacks.err, HasSubstr("has a 'pre_patch' callback: not supported")) << callbacks.err;

  // Shadow variables: the module leaks, fix1 stops the leak with a shadow variable, fix2 adds a
  // counter in another one. Each prints what it does.
  const std::string prevented_line = "livepatch_fix1_dummy_leak_dtor: dummy @ .*, prevented leak @";
  const std::string counted_line = "livepatch_fix2_dummy_free: dummy @ .*, check counter = ";
  // How many kernel log lines match `pattern`, once one does or after `seconds`.
  auto logged = [&](const std::string& pattern, int seconds) {
    return Trim(Guest("for i in $(seq " + std::to_string(seconds * 2) + "); do dmesg | grep -q '" + pattern +
                          "' && break; sleep 0.5; done; dmesg | grep -c '" + pattern + "' || true",
                      seconds + 30));
  };
  PushFile(*guest_, ko("livepatch-shadow-mod"), "/tmp/livepatch-shadow-mod.ko");
  PushFile(*guest_, ko("livepatch-shadow-fix1"), "/tmp/livepatch-shadow-fix1.ko");
  PushFile(*guest_, ko("livepatch-shadow-fix2"), "/tmp/livepatch-shadow-fix2.ko");
  {
    // The oracle first: the same fixes loaded with insmod, under the guest's own livepatch,
    // print what the host-applied ones must print below. Their module exits free every shadow
    // variable they made (klp_shadow_free_all), so the host's run starts from none.
    SCOPED_TRACE("in-guest livepatch (the oracle)");
    const std::string settle =
        "for i in $(seq 100); do grep -q 1 /sys/kernel/livepatch/*/transition 2>/dev/null || break; sleep 0.2; done; ";
    Guest("dmesg -c > /dev/null");
    ASSERT_EQ(Trim(Guest("insmod /tmp/livepatch-shadow-mod.ko; echo rc=$?")), "rc=0");
    ASSERT_EQ(Trim(Guest("insmod /tmp/livepatch-shadow-fix1.ko; echo rc=$?; " + settle)), "rc=0");
    EXPECT_NE(logged(prevented_line, 20), "0") << Guest("dmesg | tail -30");
    ASSERT_EQ(Trim(Guest("insmod /tmp/livepatch-shadow-fix2.ko; echo rc=$?; " + settle)), "rc=0");
    EXPECT_NE(logged(counted_line, 10), "0") << Guest("dmesg | tail -30");
    EXPECT_EQ(Trim(Guest("for p in livepatch_shadow_fix2 livepatch_shadow_fix1; do "
                         "echo 0 > /sys/kernel/livepatch/$p/enabled; "
                         "for i in $(seq 100); do [ -e /sys/kernel/livepatch/$p ] || break; sleep 0.2; done; "
                         "rmmod $p || echo rmmod $p failed; done; rmmod livepatch_shadow_mod; echo rc=$?")),
              "rc=0");
    EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
    Guest("dmesg -c > /dev/null");
  }
  ASSERT_EQ(Trim(Guest("insmod /tmp/livepatch-shadow-mod.ko; echo rc=$?")), "rc=0");
  HvpatchRun fix1 = Hv({"apply", Domain(), ko("livepatch-shadow-fix1")});
  ASSERT_EQ(fix1.exit_code, 0) << Describe(fix1);
  // A dummy allocated by the patched dummy_alloc expires after 12 s and is freed by the
  // patched dummy_free, whose shadow-variable destructor frees the leak and says so.
  EXPECT_NE(logged(prevented_line, 20), "0") << Guest("dmesg | tail -30");
  HvpatchRun fix2 = Hv({"apply", Domain(), ko("livepatch-shadow-fix2")});
  ASSERT_EQ(fix2.exit_code, 0) << Describe(fix2);
  EXPECT_NE(logged(counted_line, 10), "0") << Guest("dmesg | tail -30");
  for (const char* name : {"livepatch_shadow_fix2", "livepatch_shadow_fix1"}) {
    HvpatchRun r = Hv({"revert", Domain(), name});
    EXPECT_EQ(r.exit_code, 0) << Describe(r);
  }
  // After the revert the module's own dummy_free runs again, and no fix prints any more.
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
  Guest("dmesg -c > /dev/null");
  EXPECT_NE(logged("] dummy_free: dummy @ .*, expired = ", 20), "0") << Guest("dmesg | tail -30");
  EXPECT_EQ(Trim(Guest("dmesg | grep -c livepatch_fix || true")), "0") << Guest("dmesg | tail -30");
  EXPECT_EQ(Trim(Guest("rmmod livepatch_shadow_mod; echo rc=$?")), "rc=0");
  EXPECT_EQ(Oopses(), "") << Guest("dmesg | tail -50");
}

}  // namespace
}  // namespace hv
