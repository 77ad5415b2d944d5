#include "tests/harness/guest_output.h"
#include "tests/integration/lifecycle/lifecycle_support.h"

#include "tests/harness/kernel_text.h"

#include <gmock/gmock.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "qmp/qmp_client.h"
#include "status_matchers.h"
#include "vmm/page_walk.h"
#include "vmm/vm.h"

namespace hv::testing {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string Describe(const HvpatchRun& r) {
  return "exit " + std::to_string(r.exit_code) + " signal " + std::to_string(r.signal) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

void LifecycleFixture::SetUp() {
  ASSERT_TRUE(fs::exists(HvpatchBinary())) << "hvpatch not found at '" << HvpatchBinary() << "' (set HVPATCH_BIN)";
  char vm[] = "/tmp/hvpatch-vm-life-XXXXXX";  // scripts/test.sh warns of leftover hvpatch-vm-* QEMUs
  char state[] = "/tmp/hvpatch-life-state-XXXXXX";
  char scratch[] = "/tmp/hvpatch-life-run-XXXXXX";
  ASSERT_NE(mkdtemp(vm), nullptr);
  ASSERT_NE(mkdtemp(state), nullptr);
  ASSERT_NE(mkdtemp(scratch), nullptr);
  vm_dir_ = vm;
  arena_path_ = vm_dir_ + "/arena";
  state_dir_ = state;
  scratch_dir_ = scratch;
}

void LifecycleFixture::TearDown() {
  processes_.clear();  // kills (SIGKILL) any hvpatch still running or stopped
  if (vm_) {
    EXPECT_THAT(vm_->Stop(), IsOk());
  }
  vm_.reset();
  std::error_code ec;
  if (std::getenv("HVPATCH_KEEP_VM_DIR") == nullptr) {
    fs::remove_all(vm_dir_, ec);
    fs::remove_all(state_dir_, ec);
    fs::remove_all(scratch_dir_, ec);
  }
}

void LifecycleFixture::Boot(TestVmOptions options) {
  options.dir = vm_dir_;
  auto vm = TestVm::Start(options);
  ASSERT_THAT(vm, IsOk());
  vm_ = std::move(*vm);
}

void LifecycleFixture::Restart(TestVmOptions options) {
  if (vm_) {
    ASSERT_THAT(vm_->Stop(), IsOk());
    vm_.reset();
  }
  Boot(std::move(options));
}

HvpatchProcess& LifecycleFixture::Start(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  const std::string log = scratch_dir_ + "/run-" + std::to_string(++runs_);
  std::vector<std::string> a;
  if (std::find(args.begin(), args.end(), "--state-dir") == args.end()) a = {"--state-dir", state_dir_};
  a.insert(a.end(), args.begin(), args.end());
  processes_.push_back(std::make_unique<HvpatchProcess>(a, env, log));
  return *processes_.back();
}

HvpatchRun LifecycleFixture::Hv(const std::vector<std::string>& args, const std::vector<std::string>& env,
                                int timeout_s) {
  return Start(args, env).Wait(timeout_s);
}

json LifecycleFixture::ListJson() {
  HvpatchRun l = Hv({"--json", "list", Domain()});
  EXPECT_EQ(l.exit_code, 0) << Describe(l);
  json j = json::parse(l.out, nullptr, false);
  EXPECT_TRUE(j.is_object() && j["patches"].is_array()) << l.out;
  return j.is_object() ? j : json::object({{"patches", json::array()}});
}

std::string LifecycleFixture::Guest(const std::string& script, int timeout_s) {
  if (!vm_) {
    ADD_FAILURE() << "no guest";
    return "<no guest>";
  }
  return testing::OutputOrFailure(vm_->Check(script, timeout_s));
}

std::uint64_t LifecycleFixture::KallsymsAddress(const std::string& name) {
  const std::string line = Guest("awk '$3 == \"" + name + "\" { print $1; exit }' /proc/kallsyms");
  return std::strtoull(line.c_str(), nullptr, 16);
}

std::vector<std::uint8_t> LifecycleFixture::KernelBytes(std::uint64_t va, std::size_t n) {
  auto bytes = ::hv::testing::ReadKernelText(Domain(), va, n);
  if (!bytes.ok()) {
    ADD_FAILURE() << "reading kernel memory: " << bytes.status().message();
    return {};
  }
  return std::move(*bytes);
}

std::string LifecycleFixture::ArenaBytes() const {
  std::ifstream f(arena_path_, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void LifecycleFixture::Qmp(const std::string& command, const json& arguments) {
  auto qmp = qmp::QmpClient::Connect(vm_dir_ + "/qmp.sock");
  ASSERT_THAT(qmp, IsOk());
  ASSERT_THAT((*qmp)->Execute(command, arguments), IsOk());
}

void LifecycleFixture::MigrateToFile(const std::string& path) {
  auto qmp = qmp::QmpClient::Connect(vm_dir_ + "/qmp.sock");
  ASSERT_THAT(qmp, IsOk());
  ASSERT_THAT((*qmp)->Execute("migrate", {{"uri", "exec:cat > '" + path + "'"}}), IsOk());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (;;) {
    auto st = (*qmp)->Execute("query-migrate");
    ASSERT_THAT(st, IsOk());
    const std::string status = (*st).value("status", "");
    if (status == "completed") return;
    ASSERT_NE(status, "failed") << st->dump();
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "migration not done: " << st->dump();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace hv::testing
