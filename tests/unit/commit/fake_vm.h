// A Vm over a std::vector, with real 4-level page tables built in it, a run state, and a log of
// every write, for testing the commit and the patch engine without QEMU.
#pragma once

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "base/hex.h"
#include "vmm/page_walk.h"
#include "vmm/vm.h"

namespace hv::testing {

class FakeVm : public vmm::Vm {
 public:
  explicit FakeVm(std::size_t bytes = 16 << 20) : mem_(bytes, 0) {
    cr3_ = AllocPage();
  }

  // Maps `va` (4 KiB page) to a fresh physical page; returns the page's gpa.
  std::uint64_t Map(std::uint64_t va) {
    std::uint64_t table = cr3_;
    for (int level = 4; level >= 2; --level) {
      const int shift = 12 + 9 * (level - 1);
      const std::uint64_t slot = table + ((va >> shift) & 511) * 8;
      std::uint64_t e = Q(slot);
      if (!(e & vmm::pte::kPresent)) {
        e = AllocPage() | vmm::pte::kPresent | vmm::pte::kWritable;
        SetQ(slot, e);
      }
      table = e & vmm::pte::kAddrMask;
    }
    const std::uint64_t slot = table + ((va >> 12) & 511) * 8;
    std::uint64_t e = Q(slot);
    if (!(e & vmm::pte::kPresent)) {
      e = AllocPage() | vmm::pte::kPresent | vmm::pte::kWritable;
      SetQ(slot, e);
    }
    return e & vmm::pte::kAddrMask;
  }
  void MapRange(std::uint64_t va, std::uint64_t size) {
    for (std::uint64_t p = va & ~0xfffull; p < va + size; p += 4096) Map(p);
  }
  void PokeVirt(std::uint64_t va, const std::vector<std::uint8_t>& b) {
    for (std::size_t i = 0; i < b.size(); ++i) mem_[Gpa(va + i)] = b[i];
  }
  std::vector<std::uint8_t> PeekVirt(std::uint64_t va, std::size_t n) const {
    std::vector<std::uint8_t> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = mem_[Gpa(va + i)];
    return out;
  }
  std::uint64_t Gpa(std::uint64_t va) const {
    auto t = vmm::TranslateVirt(*this, Mode(), va);
    return t.ok() ? t->gpa : ~0ull;
  }
  vmm::PagingMode Mode() const { return {cr3_, false, true}; }

  // vmm::Vm
  Status Pause() override {
    ++pauses_;
    if (depth_++ == 0) {
      was_running_ = running_;
      running_ = false;
    }
    return Status::Ok();
  }
  Status Resume() override {
    if (depth_ == 0) return FailedPrecondition("resume without pause");
    if (--depth_ == 0) running_ = was_running_;
    return Status::Ok();
  }
  Result<bool> Running() override { return running_; }
  // The bracket around a pause, recorded in `bracket` with the pause depth it was called at.
  Status PrepareToPause() override {
    bracket.push_back("prepare at depth " + std::to_string(depth_));
    return Status::Ok();
  }
  Status AfterResume() override {
    bracket.push_back("after at depth " + std::to_string(depth_));
    return Status::Ok();
  }
  std::vector<std::string> bracket;
  Status ForceResume() override {
    depth_ = 0;
    running_ = true;
    return Status::Ok();
  }
  Result<std::vector<vmm::VcpuState>> VcpuStates() override {
    if (running_) return FailedPrecondition("VM is running");
    std::vector<vmm::VcpuState> out;
    for (std::size_t i = 0; i < rips.size(); ++i) {
      vmm::VcpuState v;
      v.index = static_cast<int>(i);
      v.rip = rips[i];
      v.cr3 = cr3_;
      v.efer = 1 << 11;
      out.push_back(v);
    }
    return out;
  }
  Status ReadPhys(std::uint64_t gpa, std::span<std::uint8_t> out) const override {
    if (gpa > mem_.size() || out.size() > mem_.size() - gpa) {
      return InvalidArgument("read outside guest RAM at " + Hex(gpa));
    }
    std::memcpy(out.data(), mem_.data() + gpa, out.size());
    return Status::Ok();
  }
  std::vector<vmm::PhysRange> RamRanges() const override { return {{0, mem_.size()}}; }
  Status WritePhys(std::uint64_t gpa, std::span<const std::uint8_t> data) override {
    if (running_) return FailedPrecondition("write while running");
    if (gpa > mem_.size() || data.size() > mem_.size() - gpa) return InvalidArgument("bad gpa");
    std::memcpy(mem_.data() + gpa, data.data(), data.size());
    log.push_back("phys " + Hex(gpa));
    return Status::Ok();
  }
  Status WriteCode(std::uint64_t va, std::span<const std::uint8_t> data) override {
    if (running_) return FailedPrecondition("code write while running");
    if (fail_code_writes) return Internal("injected write failure");
    if (fail_code_writes_after >= 0 && code_writes_++ >= fail_code_writes_after) {
      fail_code_writes_after = -1;  // fail once: the rollback's writes go through
      return Internal("injected write failure");
    }
    for (std::size_t i = 0; i < data.size(); ++i) mem_[Gpa(va + i)] = data[i];
    log.push_back("code " + Hex(va));
    return Status::Ok();
  }
  Result<vmm::ArenaDevice> Arena() override {
    if (!arena) return NotFound("no arena device");
    return *arena;
  }
  std::string Identity() const override { return "fake-vm"; }
  std::string Describe() const override { return "fake VM"; }

  std::vector<std::uint64_t> rips = {0, 0};
  std::vector<std::string> log;
  std::optional<vmm::ArenaDevice> arena;
  bool fail_code_writes = false;
  int fail_code_writes_after = -1;  // fail the (N+1)th code write, once
  int code_writes_ = 0;
  bool running_ = true;
  int pauses_ = 0;
  int depth_ = 0;

  std::uint64_t AllocPage() {
    next_page_ += 4096;
    return next_page_;
  }
  std::uint64_t Q(std::uint64_t gpa) const {
    std::uint64_t v;
    std::memcpy(&v, mem_.data() + gpa, 8);
    return v;
  }
  void SetQ(std::uint64_t gpa, std::uint64_t v) { std::memcpy(mem_.data() + gpa, &v, 8); }

 private:
  std::vector<std::uint8_t> mem_;
  std::uint64_t cr3_ = 0;
  std::uint64_t next_page_ = 0;
  bool was_running_ = true;
};

}  // namespace hv::testing
