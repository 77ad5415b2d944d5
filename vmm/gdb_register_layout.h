// Where each register sits in a gdbstub `g` reply, taken from the target description
// (qXfer:features:read:target.xml and the files it includes) rather than hard-coded, so a QEMU
// that adds or reorders registers is read correctly or refused by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace hv::vmm {

struct GdbRegister {
  std::string name;
  int regnum = 0;
  int bitsize = 0;
  std::size_t offset = 0;  // byte offset in the `g` reply
};

class GdbRegisterLayout {
 public:
  // Fetches an annex ("target.xml", "i386-64bit.xml") from the stub.
  using AnnexReader = std::function<Result<std::string>(std::string_view annex)>;

  // Parses `xml` (the contents of target.xml), following <xi:include href=...> through
  // `read` (at most 8 levels, 32 files). XML comments are skipped, which matters: QEMU's
  // i386-64bit.xml keeps commented-out <reg> entries. Registers are numbered in document
  // order unless a regnum attribute says otherwise; `g` offsets follow register numbers.
  // Errors: kInvalidArgument for a <reg> without name or with a bad bitsize, duplicate
  // register numbers, or too deep/too many includes; errors from `read` with context.
  static Result<GdbRegisterLayout> Parse(std::string_view xml, const AnnexReader& read);

  const std::vector<GdbRegister>& registers() const { return registers_; }
  const GdbRegister* Find(std::string_view name) const;

  // Reads register `name` (little-endian, up to 64 bits) from a decoded `g` reply.
  // Errors: kNotFound when the layout has no such register; kInvalidArgument when the reply
  // is too short to hold it (QEMU sends only the core registers) or it is wider than 64 bits.
  Result<std::uint64_t> Read(std::span<const std::uint8_t> g_reply, std::string_view name) const;

 private:
  std::vector<GdbRegister> registers_;  // sorted by regnum
};

}  // namespace hv::vmm
