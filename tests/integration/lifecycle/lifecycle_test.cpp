// Issue 10, acceptance 1-3: the ledger across a VM's life, on real TCG guests, with the real
// `hvpatch` binary run as an operator runs it.
//   1. apply, revert, QEMU stopped and started again at the same QMP path: apply works.
//   2. apply, then system_reset inside the same QEMU: list shows no live patch, revert writes
//      nothing, apply works.
//   2c. the vmcoreinfo location hint within a boot and across a reboot.
//   3. apply, migrate to a file, a new QEMU with -incoming and a zeroed arena file: still
//      patched, list shows it, revert restores.
// Each test boots its own guest in a directory it keeps across QEMU restarts (same QMP path,
// same arena file), and has its own state directory.
//
// What the guest prints is the proof of "patched": hvp_sample makes /proc/cmdline print
// kSampleText. "Nothing written" is checked from the host, independently of hvpatch: the arena
// file's bytes and the entry of cmdline_proc_show (read through our own QEMU connection).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "qmp/qmp_client.h"
#include "status_matchers.h"
#include "tests/harness/test_vm.h"
#include "tests/integration/lifecycle/lifecycle_support.h"
#include "tests/integration/patch/hvpatch_process.h"
#include "vmm/qemu_vm.h"

namespace hv {
namespace {

using ::hv::testing::Describe;
using ::hv::testing::HvpatchRun;
using ::hv::testing::kFtraceNop;
using ::hv::testing::kSampleText;
using ::hv::testing::TestVm;
using ::hv::testing::TestVmOptions;
using ::testing::HasSubstr;
using json = nlohmann::json;
namespace fs = std::filesystem;

class LifecycleTest : public testing::LifecycleFixture {};

// 1. A restarted QEMU at the same socket path is a new boot: the old ledger (its arena mapping
// only, after the revert) is archived and apply maps the arena afresh. The arena file is kept
// on disk across the restart, as a /dev/shm file would be: its old bytes must not fool hvpatch.
TEST_F(LifecycleTest, RestartAtTheSameQmpPathThenApplyWorks) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  const std::string original = Guest("cat /proc/cmdline");
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
  const json before = ListJson();
  ASSERT_TRUE(before["boot"].is_object()) << before.dump();
  EXPECT_TRUE(before["boot"]["mark"].is_string()) << "the arena stays mapped after a revert: " << before.dump();

  ASSERT_NO_FATAL_FAILURE(Restart({}));
  HvpatchRun again = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(again.exit_code, 0) << Describe(again);
  EXPECT_THAT(again.err, HasSubstr("the ledger of an earlier boot of this VM ("));
  EXPECT_THAT(again.err, HasSubstr("it held no patch, and the VM is treated as unpatched"));
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);

  const json after = ListJson();
  ASSERT_EQ(after["patches"].size(), 1u) << after.dump();
  EXPECT_EQ(after["patches"][0]["name"], "hvp_sample");
  EXPECT_EQ(after["patches"][0]["consistent"], true);
  ASSERT_EQ(after["archived_ledgers"].size(), 1u) << after.dump();
  const std::string archived = after["archived_ledgers"][0]["path"].get<std::string>();
  EXPECT_TRUE(fs::exists(archived)) << archived;
  EXPECT_NE(after["boot"]["mark"], before["boot"]["mark"]) << after.dump();
  HvpatchRun r2 = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r2.exit_code, 0) << Describe(r2);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}

// 2. A reboot inside the same QEMU: KASLR moves the kernel and the kernel's page tables are
// rebuilt, while the arena's bytes (and hvpatch's boot mark in them) survive.
TEST_F(LifecycleTest, SystemResetLeavesNoLivePatchRevertWritesNothingApplyWorks) {
  TestVmOptions o;
  o.no_reboot = false;
  ASSERT_NO_FATAL_FAILURE(Boot(o));
  const std::string original = Guest("cat /proc/cmdline");
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  const json booted = ListJson();

  const int boots = vm_->Boots();
  ASSERT_NO_FATAL_FAILURE(Qmp("system_reset"));
  ASSERT_THAT(vm_->WaitForBoot(boots), IsOk());
  EXPECT_EQ(Guest("cat /proc/cmdline"), original) << "a reboot runs the original kernel";

  HvpatchRun l = Hv({"--json", "list", Domain()});
  ASSERT_EQ(l.exit_code, 0) << Describe(l);
  const json j = json::parse(l.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << l.out;
  EXPECT_TRUE(j["patches"].empty()) << l.out;
  ASSERT_EQ(j["recovered"].size(), 1u) << l.out;
  EXPECT_THAT(j["recovered"][0].get<std::string>(),
              HasSubstr("its patches (hvp_sample) went with that boot, and the VM is treated as unpatched"));
  ASSERT_EQ(j["archived_ledgers"].size(), 1u) << l.out;
  EXPECT_EQ(j["archived_ledgers"][0]["patches"], json::array({"hvp_sample"}));
  // Which part told the boots apart (KASLR almost always; the PMD entry when KASLR repeats).
  std::printf("[figure] boot before reset %s, after %s; archived because: %s\n", booted["boot"].dump().c_str(),
              j["boot"].dump().c_str(), j["archived_ledgers"][0]["reason"].get<std::string>().c_str());
  EXPECT_NE(j["boot"], booted["boot"]);
  EXPECT_TRUE(j["boot"]["mark"].is_null()) << "no arena mapped in this boot yet: " << l.out;

  // Revert: says the patch went with the old boot, and writes nothing.
  const std::string arena_before = ArenaBytes();
  const std::uint64_t entry = KallsymsAddress("cmdline_proc_show");
  const std::vector<std::uint8_t> entry_before = KernelBytes(entry, 16);
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("patch 'hvp_sample' is gone with an earlier boot of the guest"));
  EXPECT_THAT(r.out, HasSubstr("nothing to revert, nothing written"));
  EXPECT_EQ(ArenaBytes(), arena_before) << "revert wrote into the arena";
  EXPECT_EQ(KernelBytes(entry, 16), entry_before) << "revert wrote into kernel text";
  ASSERT_GE(entry_before.size(), 5u);
  EXPECT_EQ(std::vector<std::uint8_t>(entry_before.begin(), entry_before.begin() + 5), kFtraceNop)
      << "the rebooted kernel's entry is the ftrace nop it put there";

  HvpatchRun again = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(again.exit_code, 0) << Describe(again);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  HvpatchRun r2 = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r2.exit_code, 0) << Describe(r2);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}

// 2b. The same reboot with `nokaslr`: the kernel comes back at the same addresses with its page
// tables at the same place, and the arena (with hvpatch's boot mark) survives. Only the arena's
// PMD entry, gone with the page tables the boot rebuilt, tells the boots apart. The new apply
// then maps the arena in another slot than the old boot's (TCG may still hold translations of
// the old boot's code at that address).
TEST_F(LifecycleTest, SystemResetWithNokaslrIsToldApartByTheArenaPmdEntry) {
  TestVmOptions o;
  o.no_reboot = false;
  o.extra_append = "nokaslr";
  ASSERT_NO_FATAL_FAILURE(Boot(o));
  const std::string original = Guest("cat /proc/cmdline");
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  const json booted = ListJson();
  ASSERT_EQ(booted["patches"].size(), 1u) << booted.dump();
  const std::string old_new_addr = booted["patches"][0]["functions"][0]["new_addr"].get<std::string>();

  const int boots = vm_->Boots();
  ASSERT_NO_FATAL_FAILURE(Qmp("system_reset"));
  ASSERT_THAT(vm_->WaitForBoot(boots), IsOk());
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);

  const json j = ListJson();
  EXPECT_TRUE(j["patches"].empty()) << j.dump();
  ASSERT_EQ(j["archived_ledgers"].size(), 1u) << j.dump();
  EXPECT_THAT(j["archived_ledgers"][0]["reason"].get<std::string>(),
              HasSubstr("the guest's page tables were rebuilt by a boot"));
  EXPECT_EQ(j["boot"]["kaslr_offset"], booted["boot"]["kaslr_offset"]) << "nokaslr: the same KASLR offset";
  EXPECT_EQ(j["boot"]["page_table_gpa"], booted["boot"]["page_table_gpa"]);

  HvpatchRun again = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(again.exit_code, 0) << Describe(again);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  const json after = ListJson();
  ASSERT_EQ(after["patches"].size(), 1u) << after.dump();
  EXPECT_NE(after["patches"][0]["functions"][0]["new_addr"].get<std::string>(), old_new_addr)
      << "the new boot's arena is in the old boot's slot";
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}

// 2c. The vmcoreinfo location hint (STATE_DIR/<vm>.vmcoreinfo): within a boot the next
// command reads the page the last one found instead of scanning guest RAM. After a reboot
// (KASLR moves the kernel; the old page may still hold the old boot's copy, and the old
// init_uts_ns the old release) the hint is used only if the vCPUs' page tables confirm it, and
// the KASLR offset is the new boot's, as the guest's own /proc/kallsyms says.
TEST_F(LifecycleTest, VmcoreinfoHintIsUsedWithinABootAndCheckedAgainstTheVcpusAfterAReboot) {
  TestVmOptions o;
  o.no_reboot = false;
  ASSERT_NO_FATAL_FAILURE(Boot(o));
  auto info = [&]() -> json {
    HvpatchRun r = Hv({"--json", "info", Domain()});
    EXPECT_EQ(r.exit_code, 0) << Describe(r);
    json j = json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.out;
    return j.is_object() ? j : json::object();
  };
  // _text is linked at __START_KERNEL (CONFIG_PHYSICAL_START 16 MiB above __START_KERNEL_map).
  auto guest_kaslr = [&] {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%llx",
                  static_cast<unsigned long long>(KallsymsAddress("_text") - 0xffffffff81000000ull));
    return std::string(buf);
  };
  const json first = info();
  EXPECT_EQ(first["vmcoreinfo_source"], "scan") << first.dump();
  const json second = info();
  EXPECT_EQ(second["vmcoreinfo_source"], "hint") << second.dump();
  EXPECT_EQ(second["vmcoreinfo_gpa"], first["vmcoreinfo_gpa"]);
  EXPECT_EQ(second["build_id"], first["build_id"]);
  EXPECT_EQ(second["kaslr_offset"], first["kaslr_offset"]);
  EXPECT_EQ(second["kaslr_offset"], guest_kaslr());

  // One guest page read or written from the host through our own connection (no hvpatch).
  auto phys_page = [&](std::uint64_t gpa, const std::vector<std::uint8_t>* write) -> std::vector<std::uint8_t> {
    std::vector<std::uint8_t> page(4096);
    auto vm = vmm::Open(Domain());
    EXPECT_THAT(vm, IsOk());
    if (!vm.ok()) return {};
    EXPECT_THAT((*vm)->Pause(), IsOk());
    EXPECT_THAT(write ? (*vm)->WritePhys(gpa, *write) : (*vm)->ReadPhys(gpa, page), IsOk());
    EXPECT_THAT((*vm)->Resume(), IsOk());
    return page;
  };
  auto gpa_of = [](const json& j) { return std::stoull(j["vmcoreinfo_gpa"].get<std::string>(), nullptr, 16); };
  const std::vector<std::uint8_t> old_copy = phys_page(gpa_of(first), nullptr);

  const int boots = vm_->Boots();
  ASSERT_NO_FATAL_FAILURE(Qmp("system_reset"));
  ASSERT_THAT(vm_->WaitForBoot(boots), IsOk());
  const std::string kaslr = guest_kaslr();
  const json rebooted = info();
  EXPECT_EQ(rebooted["kaslr_offset"], kaslr) << rebooted.dump();
  EXPECT_EQ(rebooted["build_id"], first["build_id"]);
  if (rebooted["vmcoreinfo_source"] != "hint") {
    EXPECT_THAT(rebooted["vmcoreinfo_source"].get<std::string>(),
                HasSubstr("scan (hint " + first["vmcoreinfo_gpa"].get<std::string>() + " rejected: "));
  }
  std::printf("[figure] after the reboot: vmcoreinfo at %s (KASLR %s), from %s\n",
              rebooted["vmcoreinfo_gpa"].get<std::string>().c_str(), kaslr.c_str(),
              rebooted["vmcoreinfo_source"].get<std::string>().c_str());

  // The case the live check is for: the hinted page holds the old boot's copy (same build and
  // release, old KASLR; here put back by the test where the new boot's first copy is, as a boot
  // that allocated its copy elsewhere would have left it). Only kdump reads that page; the
  // kernel's second copy is untouched, and the new copy is restored afterwards.
  const std::uint64_t live_gpa = gpa_of(rebooted);
  const std::vector<std::uint8_t> new_copy = phys_page(live_gpa, nullptr);
  const bool planted = kaslr != first["kaslr_offset"] && new_copy.size() == 4096 && old_copy.size() == 4096;
  json stale = rebooted;
  if (planted) {
    phys_page(live_gpa, &old_copy);
    stale = info();
    phys_page(live_gpa, &new_copy);
    EXPECT_EQ(stale["kaslr_offset"], kaslr) << stale.dump();
    EXPECT_THAT(stale["vmcoreinfo_source"].get<std::string>(),
                HasSubstr("scan (hint " + rebooted["vmcoreinfo_gpa"].get<std::string>() + " rejected: stale copy: "));
    EXPECT_NE(stale["vmcoreinfo_gpa"], rebooted["vmcoreinfo_gpa"]) << "the kernel's other copy";
    std::printf("[figure] stale copy planted at the hint: %s; used %s\n",
                stale["vmcoreinfo_source"].get<std::string>().c_str(), stale["vmcoreinfo_gpa"].get<std::string>().c_str());
  } else {
    std::printf("[figure] KASLR repeated across the reboot: no stale copy planted\n");
  }
  const json after = info();
  EXPECT_EQ(after["kaslr_offset"], kaslr) << after.dump();
  EXPECT_EQ(after["build_id"], first["build_id"]);
  // The hint saved by the run before is a copy of this boot (the other one, if the stale copy
  // was planted).
  EXPECT_EQ(after["vmcoreinfo_source"], "hint") << after.dump();
  EXPECT_EQ(after["vmcoreinfo_gpa"], stale["vmcoreinfo_gpa"]);
}

// 3. Save/restore: the migration stream carries guest RAM and the arena (master=on), so the
// restored VM is the same boot and keeps its ledger, even though the new QEMU's arena file
// started as zeroes.
TEST_F(LifecycleTest, MigratedToAFileAndRestoredStaysPatchedAndRevertRestores) {
  ASSERT_NO_FATAL_FAILURE(Boot({}));
  const std::string original = Guest("cat /proc/cmdline");
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText);
  const json saved = ListJson();

  const std::string stream = vm_->dir() + "/state.migration";
  ASSERT_NO_FATAL_FAILURE(MigrateToFile(stream));
  ASSERT_THAT(vm_->Stop(), IsOk());
  vm_.reset();
  {
    // The new QEMU's arena file: all zeroes, as on a host that never ran this VM.
    std::ofstream zero(arena_path_, std::ios::binary | std::ios::trunc);
    const std::string zeroes(2u << 20, '\0');
    zero.write(zeroes.data(), static_cast<std::streamsize>(zeroes.size()));
  }
  TestVmOptions o;
  o.incoming = "exec:cat '" + stream + "'";
  ASSERT_NO_FATAL_FAILURE(Restart(o));
  EXPECT_NE(ArenaBytes(), std::string(2u << 20, '\0')) << "the stream did not bring the arena back";
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText) << "the restored guest lost the patch";

  const json j = ListJson();
  ASSERT_EQ(j["patches"].size(), 1u) << j.dump();
  EXPECT_EQ(j["patches"][0]["name"], "hvp_sample");
  EXPECT_EQ(j["patches"][0]["consistent"], true);
  EXPECT_TRUE(j["recovered"].empty()) << j.dump();
  EXPECT_TRUE(j["archived_ledgers"].empty()) << j.dump();
  EXPECT_EQ(j["boot"], saved["boot"]) << "the same boot";

  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}


// 4. An apply while a live migration is under way: QEMU's dirty log does not see hvpatch's own
// writes into guest RAM and the arena, so hvpatch writes them again through QEMU (the gdbstub)
// before the guest runs, and the migration sends them again. The migration is held at its last step
// (capability pause-before-switchover: the VM is stopped, the final pass of dirty pages not
// yet sent), which makes the window certain instead of a race.
TEST_F(LifecycleTest, AppliedDuringALiveMigrationArrivesAtTheDestination) {
  TestVmOptions boot;
  boot.agent = false;  // the VM is stopped by the migration: no agent could answer
  ASSERT_NO_FATAL_FAILURE(Boot(boot));
  const std::string original = Guest("cat /proc/cmdline");
  ASSERT_NE(original, kSampleText);

  auto qmp = qmp::QmpClient::Connect(vm_dir_ + "/qmp.sock");
  ASSERT_THAT(qmp, IsOk());
  ASSERT_THAT((*qmp)->Execute("migrate-set-capabilities",
                              {{"capabilities", json::array({{{"capability", "pause-before-switchover"}, {"state", true}}})}}),
              IsOk());
  // A downtime limit of 1 ms: the migration only enters its last step once (almost) every page
  // has been sent at least once, so the pages hvpatch writes next are already on the other side
  // and reach it again only if they are marked dirty.
  ASSERT_THAT((*qmp)->Execute("migrate-set-parameters", {{"downtime-limit", 1}}), IsOk());
  const std::string stream = vm_->dir() + "/live.migration";
  ASSERT_THAT((*qmp)->Execute("migrate", {{"uri", "exec:cat > '" + stream + "'"}}), IsOk());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::string status;
  while (status != "pre-switchover") {
    auto st = (*qmp)->Execute("query-migrate");
    ASSERT_THAT(st, IsOk());
    status = (*st).value("status", "");
    ASSERT_NE(status, "failed") << st->dump();
    ASSERT_NE(status, "completed") << "pause-before-switchover was not honoured";
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << st->dump();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  qmp->reset();  // QEMU's QMP socket takes one client at a time: hvpatch's turn
  HvpatchRun a = Hv({"apply", Domain(), Patch("hvp_sample")});
  ASSERT_EQ(a.exit_code, 0) << Describe(a);

  qmp = qmp::QmpClient::Connect(vm_dir_ + "/qmp.sock");
  ASSERT_THAT(qmp, IsOk());
  ASSERT_THAT((*qmp)->Execute("migrate-continue", {{"state", "pre-switchover"}}), IsOk());
  for (;;) {
    auto st = (*qmp)->Execute("query-migrate");
    ASSERT_THAT(st, IsOk());
    status = (*st).value("status", "");
    if (status == "completed") break;
    ASSERT_NE(status, "failed") << st->dump();
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << st->dump();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  qmp->reset();
  ASSERT_THAT(vm_->Stop(), IsOk());
  vm_.reset();
  {
    std::ofstream zero(arena_path_, std::ios::binary | std::ios::trunc);
    const std::string zeroes(2u << 20, '\0');
    zero.write(zeroes.data(), static_cast<std::streamsize>(zeroes.size()));
  }
  TestVmOptions o = boot;
  o.incoming = "exec:cat '" + stream + "'";
  ASSERT_NO_FATAL_FAILURE(Restart(o));
  EXPECT_EQ(Guest("cat /proc/cmdline"), kSampleText) << "the destination lost the patch made during the migration";
  const json j = ListJson();
  ASSERT_EQ(j["patches"].size(), 1u) << j.dump();
  EXPECT_EQ(j["patches"][0]["consistent"], true) << j.dump();
  HvpatchRun r = Hv({"revert", Domain(), "hvp_sample"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Guest("cat /proc/cmdline"), original);
}

// The same, for a migration that starts inside hvpatch's pause. QemuVm asks `query-migrate`
// before the pause (PrepareToPause) rather than inside it, so a migration that began after that
// question is caught by the one after the resume (AfterResume), which marks the pause's writes
// in a second, short pause. Here the migration starts in the pause and, slowed down, has sent
// the first megabyte of guest RAM when the write lands there: the written page reaches the
// destination only through that second pause.
TEST_F(LifecycleTest, WritesOfAPauseInWhichAMigrationStartedArriveAtTheDestination) {
  TestVmOptions boot;
  boot.agent = false;
  ASSERT_NO_FATAL_FAILURE(Boot(boot));
  // Low memory no kernel uses after boot (x86 Linux reserves the first 64 KiB).
  constexpr std::uint64_t kGpa = 0x600;
  std::vector<std::uint8_t> marker(16);
  const std::string stream = vm_->dir() + "/live.migration";
  {
    auto vm = vmm::QemuVm::Connect(vm_dir_ + "/qmp.sock");
    ASSERT_THAT(vm, IsOk());
    ASSERT_THAT((*vm)->PrepareToPause(), IsOk());
    ASSERT_THAT((*vm)->Pause(), IsOk());
    ASSERT_THAT((*vm)->ReadPhys(kGpa, marker), IsOk());
    for (std::uint8_t& b : marker) b = static_cast<std::uint8_t>(~b ^ 0x5a);
    auto& qmp = (*vm)->qmp();
    // Slow enough that the first pass is still going after the write; it starts at gpa 0.
    ASSERT_THAT(qmp.Execute("migrate-set-parameters", {{"max-bandwidth", 2 << 20}}), IsOk());
    ASSERT_THAT(qmp.Execute("migrate", {{"uri", "exec:cat > '" + stream + "'"}}), IsOk());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (std::uint64_t sent = 0; sent < (1u << 20);) {
      auto st = qmp.Execute("query-migrate");
      ASSERT_THAT(st, IsOk());
      ASSERT_EQ((*st).value("status", ""), st->contains("ram") ? "active" : (*st).value("status", "")) << st->dump();
      if (st->contains("ram")) sent = (*st)["ram"].value("transferred", std::uint64_t{0});
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << st->dump();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_THAT((*vm)->WritePhys(kGpa, marker), IsOk());
    ASSERT_THAT((*vm)->Resume(), IsOk());
    ASSERT_THAT((*vm)->AfterResume(), IsOk());
    ASSERT_THAT(qmp.Execute("migrate-set-parameters", {{"max-bandwidth", 1ull << 40}}), IsOk());
    for (std::string status; status != "completed";) {
      auto st = qmp.Execute("query-migrate");
      ASSERT_THAT(st, IsOk());
      status = (*st).value("status", "");
      ASSERT_NE(status, "failed") << st->dump();
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << st->dump();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ASSERT_THAT(vm_->Stop(), IsOk());
  vm_.reset();
  TestVmOptions o = boot;
  o.incoming = "exec:cat '" + stream + "'";
  ASSERT_NO_FATAL_FAILURE(Restart(o));
  auto dest = vmm::QemuVm::Connect(vm_dir_ + "/qmp.sock");
  ASSERT_THAT(dest, IsOk());
  ASSERT_THAT((*dest)->Pause(), IsOk());
  std::vector<std::uint8_t> arrived(marker.size());
  ASSERT_THAT((*dest)->ReadPhys(kGpa, arrived), IsOk());
  ASSERT_THAT((*dest)->Resume(), IsOk());
  EXPECT_EQ(arrived, marker) << "the destination lost a write made after the migration sent its page";
}

}  // namespace
}  // namespace hv
