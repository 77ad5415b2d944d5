// The running kernel's ELF notes as /sys/kernel/notes exposes them (the raw .notes section: a
// sequence of Elf_Nhdr records, each name and descriptor padded to 4 bytes).
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace hv::agent {

// Returns the descriptor of the GNU build-id note (name "GNU", type NT_GNU_BUILD_ID = 3).
// kNotFound when there is none, kInvalidArgument when a note header runs past the end.
Result<std::string> FindGnuBuildId(std::string_view notes);

}  // namespace hv::agent
