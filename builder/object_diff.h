// The comparison at the heart of `hvpatch build` (Ksplice's and kpatch's idea): two builds of one
// kernel source file, before and after a fix, compared function by function and relocation by
// relocation. Pure: two KernelObjects in, a verdict out.
//
// Two functions are the same when their bytes are equal outside the relocation fields and their
// relocations are equal in offset, type and meaning (RelocTarget::Key): the same bytes calling
// another function is a change; a string literal that moved to another offset of the string
// section, or a clone renumbered from .isra.0 to .isra.1, is not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "builder/kernel_object.h"

namespace hv::builder {

// A function of the running kernel the patch replaces.
struct ReplacedFunction {
  std::string old_name;    // as the original object (and so kallsyms) names it
  std::string new_name;    // as the patched object names it
  std::string difference;  // the first difference, for `hvpatch build` output and tests
};

struct ObjectDiff {
  std::vector<ReplacedFunction> replaced;    // changed functions: the klp_func entries
  std::vector<std::string> new_functions;    // new (or newly out-of-line) functions, and cold parts
  std::vector<std::string> new_data;         // new data objects carried in the module
  // Every section of the patched object the module carries (function code, string literals, new
  // data), by section index, ascending. Everything else the carried code refers to is the running
  // kernel's.
  std::vector<std::uint32_t> carried_sections;
  // For a carried section's relocation whose target is NOT carried: the running kernel's name of
  // that symbol (the original object's name, which may differ in its clone number). By patched
  // entity name.
  std::vector<std::pair<std::string, std::string>> kernel_names;

  // Entries of the object's kernel-metadata tables (__bug_table, __ex_table, .altinstructions,
  // __jump_table, .static_call_sites, .smp_locks, .parainstructions) that belong to carried code:
  // the module carries them, so the kernel handles the new code as it handled the old (an
  // in-guest load applies them; hvpatch refuses what it cannot apply yet, by name).
  struct Entry {
    std::uint32_t section = 0;
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
  };
  std::vector<Entry> carried_entries;

  bool empty() const { return replaced.empty() && new_functions.empty(); }
};

// Compares `orig` and `patched` (two builds of one source file).
// Errors (prefixed "comparing 'FILE'"), all kFailedPrecondition, naming what is refused and why:
//  - existing data changes ("global data 'X' changes size from 8 to 16 bytes"), including a
//    changed initialiser of global or writable data: the running kernel's copy holds state;
//  - an `__init` function or data changes: it ran at boot and is gone;
//  - the exported interface changes (a symbol newly exported or no longer exported);
//  - a carried function refers to writable data that no symbol names.
Result<ObjectDiff> CompareObjects(const KernelObject& orig, const KernelObject& patched);

// The entry size of a kernel-metadata table (Linux 6.1 x86-64 layouts), or 0 if `section` is not
// one. The first field of every entry refers to the code it describes.
std::uint64_t MetadataEntrySize(std::string_view section);

// The first difference between two functions (or data objects), or "" if they are the same.
std::string FirstDifference(const ObjectEntity& a, const ObjectEntity& b);

}  // namespace hv::builder
