// Writes the sources of a standard livepatch module from compared objects (docs/build.md, "The
// module"). Pure: text in, text out; kbuild then compiles and links them against the prepared
// kernel tree (it brings struct module, .modinfo, __versions and vermagic right), and
// FinalizeKlpModule turns the `.klp.sym.*` references into livepatch relocations.
//
//   Kbuild          obj-m := NAME.o, NAME-y := hvp_klp.o hvp_code.o
//   hvp_klp.c       klp_func/klp_object/klp_patch tables, init = klp_enable_patch
//   hvp_code.S      the carried sections byte for byte, every relocation re-emitted with `.reloc`
//                   (same type, same meaning): carried targets locally, the running kernel's
//                   symbols by exported name or as `.klp.sym.vmlinux.NAME,SYMPOS`; the carried
//                   metadata entries; `__mcount_loc` for ftrace; and the run-pre records
//                   (patcher/run_pre.h) in a non-allocated section of their own.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "builder/kernel_object.h"
#include "builder/kernel_symbols.h"
#include "builder/object_diff.h"
#include "patcher/run_pre.h"

namespace hv::builder {

// One source file of the fix, built before and after.
struct ComparedObject {
  std::string path;  // "net/ipv4/ip_options.o", for messages
  KernelObject orig;
  KernelObject patched;
  ObjectDiff diff;
};

struct LivepatchSources {
  std::string kbuild;
  std::string klp_c;
  std::string code_s;
  std::vector<patcher::RunPreFunction> run_pre;
  // What the patch replaces, for `hvpatch build`'s report: "pipe_fasync (sympos 0)".
  std::vector<std::string> summary;
};

// Errors (prefixed "writing livepatch module 'NAME'"): kInvalidArgument for an invalid module
// name or nothing to patch; KernelSymbols::Sympos's kNotFound for a replaced function or a
// non-exported symbol that System.map lacks; kUnimplemented for a relocation type the writer
// does not know.
Result<LivepatchSources> WriteLivepatchSources(const std::string& name,
                                               const std::vector<ComparedObject>& objects,
                                               const KernelSymbols& symbols);

// The run-pre record of `f` (a function of `orig`): its bytes with relocation fields zeroed, the
// fields as holes, and the ranges the kernel rewrites at boot (alternatives, jump labels, static
// calls, paravirt sites, lock prefixes) from `orig`'s metadata tables.
patcher::RunPreFunction RunPreRecord(const KernelObject& orig, const ObjectEntity& f);

}  // namespace hv::builder
