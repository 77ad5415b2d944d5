#include "tests/harness/module_structures.h"

#include <string>

#include "patcher/commit.h"
#include "patcher/guest_kernel.h"
#include "vmm/vm.h"

namespace hv::testing {

Result<patcher::ModuleStructures> ReadGuestModuleStructures(std::string_view target) {
  HV_ASSIGN_OR_RETURN(auto vm, vmm::Open(target));
  HV_RETURN_IF_ERROR(vm->Pause());
  auto read = [&]() -> Result<patcher::ModuleStructures> {
    HV_ASSIGN_OR_RETURN(auto vcpus, vm->VcpuStates());
    patcher::GuestKernelOptions opts;
    opts.walk_tasks = false;
    HV_ASSIGN_OR_RETURN(auto kernel, patcher::GuestKernel::Build(*vm, vcpus, opts));
    HV_ASSIGN_OR_RETURN(auto layout, patcher::ShadowModuleLayout::Read(kernel->btf(), *kernel));
    patcher::VmKernelWords mem(*vm, kernel->paging());
    return patcher::ReadModuleStructures(mem, layout);
  }();
  const Status resumed = vm->Resume();
  if (!read.ok()) return read.status().WithContext("reading the module structures");
  HV_RETURN_IF_ERROR(resumed);
  return read;
}

}  // namespace hv::testing
