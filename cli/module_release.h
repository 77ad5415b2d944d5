// Whether a patch module was built for the guest's kernel: the release in its .modinfo
// `vermagic=` (kbuild writes "RELEASE SMP mod_unload ...") against the guest's OSRELEASE from
// vmcoreinfo. Fleet runs and the libvirt hook use it to skip a guest that runs another kernel
// build, with that reason, instead of failing somewhere in the symbol resolution.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace hv::cli {

// The release named by `vermagic=` in the module bytes, or empty when there is none.
std::string ModuleRelease(const std::vector<std::uint8_t>& module);

// kFailedPrecondition "patch 'PATH' was built for kernel 'A', the guest runs 'B'" when both
// are known and differ; Ok otherwise.
Status CheckBuiltFor(const std::vector<std::uint8_t>& module, const std::string& path, const std::string& guest_release);

}  // namespace hv::cli
