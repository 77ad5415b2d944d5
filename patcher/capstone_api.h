// Capstone, loaded with dlopen on first use instead of linked.
//
// Why: libcapstone.so.4 carries ~77,000 relative relocations over 1.3 MiB of tables, which the
// dynamic loader applies (and copies on write, page by page) at the start of every process
// that links it. Measured on the sixth session's host: a program that only links libcapstone
// starts in 14.7 ms, one that does not in 4.5 ms; `hvpatch` spent ~10 ms of each command
// there, though only apply, check and build disassemble. Those start the load on a thread of
// its own at once (PreloadCapstone), where it overlaps the command's waits on QEMU.
#pragma once

#include <capstone/capstone.h>

#include "base/status.h"

namespace hv::patcher {

// The entry points hvpatch uses.
struct CapstoneApi {
  decltype(&::cs_open) open;
  decltype(&::cs_close) close;
  decltype(&::cs_option) option;
  decltype(&::cs_disasm) disasm;
  decltype(&::cs_free) free;
  decltype(&::cs_malloc) malloc;
  decltype(&::cs_disasm_iter) disasm_iter;
};

// The library, loaded once; thread-safe (a caller during a preload waits for it). Errors:
// kUnavailable naming the library and dlerror()'s reason, with a hint to install it.
Result<const CapstoneApi*> Capstone();

// Starts Capstone() on a detached thread and returns at once.
void PreloadCapstone();

}  // namespace hv::patcher
