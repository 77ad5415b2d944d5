// Reads guest kernel memory from the host through a connection of the test's own (vmm::Open),
// independently of hvpatch: the tests' oracle for what is really in the guest's kernel text.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::testing {

// `n` bytes at kernel virtual address `va` of the VM `target` ("qmp:PATH", a domain), read with
// the page tables of a vCPU in kernel mode (a user-mode vCPU may be on a PTI table). Pauses and
// resumes the VM for each of up to 20 attempts, 50 ms apart, until a vCPU is in kernel mode.
// Errors: opening the VM, pausing or resuming it, and kNotFound when no attempt found a vCPU in
// kernel mode or the read failed.
Result<std::vector<std::uint8_t>> ReadKernelText(std::string_view target, std::uint64_t va, std::size_t n);

}  // namespace hv::testing
