// The fixture of the lifecycle and fault tests: one guest per test, booted in a directory the
// test keeps across QEMU restarts (same QMP path, same arena file), its own state directory,
// and the real hvpatch binary as a subprocess.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/harness/test_vm.h"
#include "tests/integration/patch/hvpatch_process.h"

namespace hv::testing {

inline const std::vector<std::uint8_t> kFtraceNop = {0x0f, 0x1f, 0x44, 0x00, 0x00};
inline constexpr char kSampleText[] = "hvpatch: this kernel was live-patched\n";

std::string Describe(const HvpatchRun& r);

class LifecycleFixture : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Boots the guest in the test's VM directory (ASSERTs on failure).
  void Boot(TestVmOptions options);
  // Stops the running QEMU (if any) and starts a new one in the same directory.
  void Restart(TestVmOptions options);

  std::string Domain() const { return "qmp:" + vm_dir_ + "/qmp.sock"; }
  static std::string Patch(const std::string& name) { return PatchModule(name); }

  // Runs hvpatch to its end with the test's state directory (unless args name one).
  HvpatchRun Hv(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                int timeout_s = 300);
  // Starts hvpatch in the background (same state directory rule); the fixture kills it at the end.
  HvpatchProcess& Start(const std::vector<std::string>& args, const std::vector<std::string>& env = {});
  // `hvpatch --json list`, checked to exit 0.
  nlohmann::json ListJson();

  // A guest shell command's output; a failure is recorded and yields a marker string.
  std::string Guest(const std::string& script, int timeout_s = 60);
  std::uint64_t KallsymsAddress(const std::string& name);
  // Kernel memory read from the host through our own QEMU connection (no hvpatch involved).
  std::vector<std::uint8_t> KernelBytes(std::uint64_t va, std::size_t n);
  // The arena file's bytes, read on the host.
  std::string ArenaBytes() const;
  // One QMP command on a short-lived connection of our own (QEMU serves one client at a time).
  void Qmp(const std::string& command, const nlohmann::json& arguments = nlohmann::json::object());
  // QMP migrate to `path` (exec:cat), waits until it completed (the VM is then paused).
  void MigrateToFile(const std::string& path);

  std::unique_ptr<TestVm> vm_;
  std::string vm_dir_;      // kept across restarts
  std::string arena_path_;  // vm_dir_/arena
  std::string state_dir_;   // the ledgers and locks
  std::string scratch_dir_; // hvpatch outputs
  int runs_ = 0;
  std::vector<std::unique_ptr<HvpatchProcess>> processes_;
};

}  // namespace hv::testing
