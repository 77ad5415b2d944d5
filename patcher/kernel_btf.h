// The guest kernel's BTF (CONFIG_DEBUG_INFO_BTF), read from __start_BTF..__stop_BTF in guest
// memory and parsed with libbpf. Structure offsets come from here, by name, so nothing depends
// on one kernel build's layout.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_memory.h"

struct btf;

namespace hv::patcher {

class KernelBtf {
 public:
  // vmlinux BTF is a few MiB; anything larger is refused as corrupt.
  static constexpr std::uint64_t kMaxBlobBytes = 64ull << 20;

  // Parses a raw BTF blob. Errors: kInvalidArgument "malformed BTF: <libbpf's reason>".
  static Result<KernelBtf> Parse(std::span<const std::uint8_t> blob);
  // Reads [start, stop) from guest memory and parses it. Errors: kInvalidArgument for an empty,
  // inverted or oversized range; read errors with context; Parse's errors.
  static Result<KernelBtf> Read(const KernelMemory& mem, std::uint64_t start, std::uint64_t stop);

  // Byte offset of `path` ("tasks", "thread.sp": dots descend into embedded structs; anonymous
  // struct/union members are searched through) inside struct or union `type`. Errors: kNotFound
  // naming the type or the member; kUnimplemented for a bitfield member.
  Result<std::uint64_t> Offset(std::string_view type, std::string_view path) const;
  // Size in bytes of the member at `path` of `type` (e.g. task_struct.comm is 16).
  Result<std::uint64_t> MemberSize(std::string_view type, std::string_view path) const;
  // Size in bytes of struct/union `type`. kNotFound if there is none.
  Result<std::uint64_t> TypeSize(std::string_view type) const;
  bool HasMember(std::string_view type, std::string_view path) const;

  struct Member {
    std::string name;
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
  };
  // The named direct members of struct `type`, in order.
  Result<std::vector<Member>> Members(std::string_view type) const;

  std::size_t type_count() const;

 private:
  struct Found {
    std::uint64_t offset = 0;
    std::uint32_t type_id = 0;
  };
  Result<std::int32_t> FindComposite(std::string_view type) const;
  Result<Found> Resolve(std::string_view type, std::string_view path) const;

  struct Free {
    void operator()(struct btf* b) const;
  };
  std::unique_ptr<struct btf, Free> btf_;
};

}  // namespace hv::patcher
