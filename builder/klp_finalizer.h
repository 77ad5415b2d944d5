// The last step of a livepatch module build (Documentation/livepatch/module-elf-format.rst): kbuild
// links the module with `.klp.sym.OBJ.NAME,POS` as ordinary undefined symbols; this marks them
// SHN_LIVEPATCH and moves every relocation that uses them out of `.rela<SEC>` into a
// `.klp.rela.OBJ.<SEC>` section (SHF_RELA_LIVEPATCH), which livepatch resolves through kallsyms
// (non-exported symbols too) and the module loader leaves alone.
#pragma once

#include <string>

#include "base/status.h"

namespace hv::builder {

struct KlpFinalizeStats {
  std::size_t symbols = 0;      // marked SHN_LIVEPATCH
  std::size_t relocations = 0;  // moved into .klp.rela sections
  std::size_t sections = 0;     // .klp.rela sections created
};

// Rewrites the module at `path` in place.
// Errors (prefixed "finalizing livepatch module 'PATH'"): the OS's for the file; kInvalidArgument
// if libelf cannot read it or a `.klp.sym` name is malformed; kInternal if libelf cannot write it.
Result<KlpFinalizeStats> FinalizeKlpModule(const std::string& path);

}  // namespace hv::builder
