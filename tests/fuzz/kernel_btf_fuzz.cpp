// Hostile BTF blobs: parsed with libbpf, then every lookup the task walk and the module reader
// make, so garbage gives errors, never a crash or a hang.
#include <cstdint>

#include "patcher/kernel_btf.h"
#include "patcher/module_symbols.h"
#include "patcher/symbol_table.h"
#include "patcher/task_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto btf = hv::patcher::KernelBtf::Parse(std::span(data, size));
  if (!btf.ok()) return 0;
  hv::patcher::SymbolTable empty;
  (void)hv::patcher::TaskLayout::FromBtf(*btf, empty);
  (void)hv::patcher::ModuleLayout::FromBtf(*btf);
  for (const char* type : {"task_struct", "outer", "inner", "module", "rq", "cea_exception_stacks"}) {
    (void)btf->TypeSize(type);
    (void)btf->Members(type);
    (void)btf->Offset(type, "thread.sp");
    (void)btf->MemberSize(type, "in.sp");
    (void)btf->HasMember(type, "a.b.c.d");
  }
  return 0;
}
