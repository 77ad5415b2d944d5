// Adapts the GuestKernel model to what the patch engine asks for: symbols, paging, image end,
// and the stacks to scan inside a pause.
#pragma once

#include "patcher/guest_kernel.h"
#include "patcher/patch_engine.h"

namespace hv::patcher {

class GuestKernelView : public KernelView, public StackSource {
 public:
  // `end` is the kernel image's end (`_end`), resolved by Create.
  static Result<std::unique_ptr<GuestKernelView>> Create(const GuestKernel& kernel,
                                                         const vmm::GuestPhysMemory& mem);

  Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view object,
                                 std::uint64_t sympos) const override {
    return kernel_.Resolve(name, object, sympos);
  }
  std::string BuildId() const override { return kernel_.build_id(); }
  vmm::PagingMode KernelPaging() const override { return kernel_.paging(); }
  std::uint64_t ImageEnd() const override { return image_end_; }
  Result<std::vector<StackRegion>> Collect(std::span<const vmm::VcpuState> vcpus) override {
    return kernel_.StackRegions(mem_, vcpus);
  }

 private:
  GuestKernelView(const GuestKernel& k, const vmm::GuestPhysMemory& m, std::uint64_t end)
      : kernel_(k), mem_(m), image_end_(end) {}
  const GuestKernel& kernel_;
  const vmm::GuestPhysMemory& mem_;
  std::uint64_t image_end_;
};

inline Result<std::unique_ptr<GuestKernelView>> GuestKernelView::Create(
    const GuestKernel& kernel, const vmm::GuestPhysMemory& mem) {
  HV_ASSIGN_OR_RETURN(ResolvedSymbol end, kernel.Resolve("_end", "vmlinux", 0));
  return std::unique_ptr<GuestKernelView>(new GuestKernelView(kernel, mem, end.address));
}

}  // namespace hv::patcher
