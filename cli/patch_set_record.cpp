#include "cli/patch_set_record.h"

#include "cli/domain_patch_set.h"
#include "cli/ledger_file.h"
#include "vmm/libvirt_vm.h"

namespace hv::cli {

namespace {

vmm::LibvirtVm* AsDomain(Session& s) { return dynamic_cast<vmm::LibvirtVm*>(s.vm.get()); }

}  // namespace

void RecordApplied(const GlobalOptions& o, Session& s, const std::string& name, const std::vector<std::uint8_t>& module) {
  vmm::LibvirtVm* d = AsDomain(s);
  if (d == nullptr) return;
  DomainPatchSet set(StateDir(o.state_dir), d->domain().uuid());
  if (Status st = set.Add(d->domain().name(), name, module); !st.ok()) {
    Progress(o, "warning: patch '" + name + "' is live but not recorded in the domain's patch set: " + st.message());
    return;
  }
  set.Log("apply: '" + name + "' recorded in the patch set");
}

void RecordReverted(const GlobalOptions& o, Session& s, const std::string& name) {
  vmm::LibvirtVm* d = AsDomain(s);
  if (d == nullptr) return;
  DomainPatchSet set(StateDir(o.state_dir), d->domain().uuid());
  if (Status st = set.Remove(name); !st.ok()) {
    Progress(o, "warning: patch '" + name + "' is reverted but still in the domain's patch set: " + st.message());
    return;
  }
  set.Log("revert: '" + name + "' removed from the patch set");
}

void RecordReplaced(const GlobalOptions& o, Session& s, const std::vector<std::string>& names, const std::string& by) {
  vmm::LibvirtVm* d = AsDomain(s);
  if (d == nullptr) return;
  DomainPatchSet set(StateDir(o.state_dir), d->domain().uuid());
  for (const auto& name : names) {
    // Gone from the guest with the replace: a restart must not bring it back, nor keep it after
    // the replacing patch is reverted.
    if (Status st = set.Remove(name); !st.ok()) {
      Progress(o, "warning: patch '" + name + "' was replaced by '" + by + "' but is still in the domain's patch set: " +
                      st.message());
      continue;
    }
    set.Log("apply: '" + name + "' removed from the patch set (replaced by '" + by + "')");
  }
}

std::vector<std::string> PatchSetNames(const GlobalOptions& o, Session& s, bool* is_domain) {
  vmm::LibvirtVm* d = AsDomain(s);
  *is_domain = d != nullptr;
  std::vector<std::string> out;
  if (d == nullptr) return out;
  auto entries = DomainPatchSet(StateDir(o.state_dir), d->domain().uuid()).Load();
  if (entries.ok()) {
    for (const auto& e : *entries) out.push_back(e.name);
  }
  return out;
}

}  // namespace hv::cli
