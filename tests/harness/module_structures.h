// Reads the guest kernel's module structures (module list, module_bug_list, both mod_tree copies
// and their bounds) from the host, through a connection of the test's own: the shadow-module
// tests' oracle for "revert leaves them as they were".
#pragma once

#include <string_view>

#include "base/status.h"
#include "patcher/shadow_module.h"

namespace hv::testing {

// Opens `target` ("qmp:PATH" or a domain), pauses it, builds the kernel model without the task
// walk, reads the structures through the guest's BTF, and resumes.
// Errors: opening, pausing or resuming the VM, the model's and the read's.
Result<patcher::ModuleStructures> ReadGuestModuleStructures(std::string_view target);

}  // namespace hv::testing
