// Adapts the GuestKernel model to what the patch engine asks for: symbols, paging and the image
// end. (The stacks to scan come from GuestKernelStacks, in guest_kernel.h.)
#pragma once

#include "patcher/guest_kernel.h"
#include "patcher/patch_engine.h"

namespace hv::patcher {

class GuestKernelView : public KernelView {
 public:
  // `end` is the kernel image's end (`_end`), resolved by Create.
  static Result<std::unique_ptr<GuestKernelView>> Create(const GuestKernel& kernel);

  Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view object,
                                 std::uint64_t sympos) const override {
    return kernel_.Resolve(name, object, sympos);
  }
  std::string BuildId() const override { return kernel_.build_id(); }
  vmm::PagingMode KernelPaging() const override { return kernel_.paging(); }
  std::uint64_t ImageEnd() const override { return image_end_; }
  const KernelBtf* Btf() const override { return &kernel_.btf(); }
  std::uint64_t KaslrOffset() const override { return kernel_.kaslr_offset(); }
  // Only a root from vmcoreinfo's init_top_pgt identifies the boot (see KernelView).
  std::uint64_t PageTableGpa() const override {
    return kernel_.vmcoreinfo().Symbol("init_top_pgt") && kernel_.vmcoreinfo().Number("phys_base") ? kernel_.paging().cr3 & vmm::pte::kAddrMask : 0;
  }

 private:
  GuestKernelView(const GuestKernel& k, std::uint64_t end) : kernel_(k), image_end_(end) {}
  const GuestKernel& kernel_;
  std::uint64_t image_end_;
};

inline Result<std::unique_ptr<GuestKernelView>> GuestKernelView::Create(const GuestKernel& kernel) {
  HV_ASSIGN_OR_RETURN(ResolvedSymbol end, kernel.Resolve("_end", "vmlinux", 0));
  return std::unique_ptr<GuestKernelView>(new GuestKernelView(kernel, end.address));
}

}  // namespace hv::patcher
