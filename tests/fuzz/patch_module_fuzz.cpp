// Fuzz target: the livepatch module loader and the linker over arbitrary bytes. Whatever the
// input, they must return a value (ok or an error), never crash, hang or read out of bounds.
#include <cstdint>
#include <span>

#include "patcher/patch_module.h"
#include "patcher/relocator.h"

namespace {

// Resolves every name, so fuzzed relocations get as far as the arithmetic; names starting with
// 'p' are per-cpu, those starting with 'z' are missing.
class AnySymbol : public hv::patcher::SymbolResolver {
 public:
  hv::Result<hv::patcher::ResolvedSymbol> Resolve(std::string_view name, std::string_view,
                                                  std::uint64_t) const override {
    if (!name.empty() && name[0] == 'z') return hv::NotFound("missing");
    if (!name.empty() && name[0] == 'p') return hv::patcher::ResolvedSymbol{0x1fdc0, 8, true};
    return hv::patcher::ResolvedSymbol{0xffffffff81000000 + name.size() * 0x1000, 0x40, false};
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto module = hv::patcher::PatchModule::Load(std::span<const std::uint8_t>(data, size), "fuzz.ko");
  if (!module.ok()) return 0;
  auto image = hv::patcher::SelectImage(*module);
  if (!image.ok()) return 0;
  AnySymbol resolver;
  auto linked = hv::patcher::Link(*module, *image, resolver,
                                  {0xffffffff96601000, 0xffffffff96640000, 0xffffffff96680000});
  (void)linked;
  return 0;
}
