// vmm::Open: picks the backend from the target string (libcamera's enumerator-factory idea).
#include "vmm/vm.h"
#include "vmm/libvirt_vm.h"
#include "vmm/qemu_vm.h"

namespace hv::vmm {

Result<std::unique_ptr<Vm>> Open(std::string_view target, const OpenOptions& options) {
  if (target.rfind("qmp:", 0) == 0) {
    const std::string path(target.substr(4));
    if (path.empty()) return InvalidArgument("target 'qmp:' has no socket path");
    QemuVmOptions qo;
    qo.attach_arena = options.attach_arena;
    qo.note = options.note;
    HV_ASSIGN_OR_RETURN(std::unique_ptr<QemuVm> vm, QemuVm::Connect(path, qo));
    return std::unique_ptr<Vm>(std::move(vm));
  }
  if (target.rfind("vmm:", 0) == 0) {
    return Unimplemented("target '" + std::string(target) + "': the hvpatch-vmm backend is not built yet");
  }
  if (target.empty()) return InvalidArgument("empty VM target");
  LibvirtVmOptions lo;
  lo.uri = options.uri;
  lo.attach_arena = options.attach_arena;
  lo.note = options.note;
  HV_ASSIGN_OR_RETURN(std::unique_ptr<LibvirtVm> vm, LibvirtVm::Open(std::string(target), lo));
  return std::unique_ptr<Vm>(std::move(vm));
}

}  // namespace hv::vmm
