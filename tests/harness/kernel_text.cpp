#include "tests/harness/kernel_text.h"

#include <chrono>
#include <sstream>
#include <thread>

#include "vmm/page_walk.h"
#include "vmm/vm.h"

namespace hv::testing {

Result<std::vector<std::uint8_t>> ReadKernelText(std::string_view target, std::uint64_t va, std::size_t n) {
  std::vector<std::uint8_t> out(n);
  auto vm = vmm::Open(target);
  if (!vm.ok()) return vm.status().WithContext("opening the VM");
  for (int attempt = 0; attempt < 20; ++attempt) {
    HV_RETURN_IF_ERROR((*vm)->Pause());
    auto vcpus = (*vm)->VcpuStates();
    Status read = Internal("no vCPU in kernel mode");
    if (vcpus.ok()) {
      for (const auto& v : *vcpus) {
        if (!v.in_kernel() || !(v.cr0 & (1u << 31))) continue;
        read = vmm::ReadVirt(**vm, {v.cr3, v.la57(), ((v.efer >> 11) & 1) != 0}, va, out);
        break;
      }
    }
    HV_RETURN_IF_ERROR((*vm)->Resume());
    if (read.ok()) return out;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::ostringstream msg;
  msg << "could not read kernel memory at 0x" << std::hex << va;
  return NotFound(msg.str());
}

}  // namespace hv::testing
