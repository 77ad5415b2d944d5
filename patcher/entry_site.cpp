#include "patcher/entry_site.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "base/hex.h"
#include "patcher/capstone_api.h"

namespace hv::patcher {

namespace {

constexpr std::uint8_t kEndbr64[4] = {0xf3, 0x0f, 0x1e, 0xfa};
constexpr std::uint8_t kNop5[5] = {0x0f, 0x1f, 0x44, 0x00, 0x00};

// Capstone's text for the one instruction at the start of `b`, or "bytes .." if it cannot decode.
std::string Describe(std::span<const std::uint8_t> b, std::uint64_t va) {
  std::string text = "bytes " + HexBytes(b.subspan(0, std::min<std::size_t>(b.size(), 5)));
  Result<const CapstoneApi*> cs = Capstone();
  csh h;
  if (!cs.ok() || (*cs)->open(CS_ARCH_X86, CS_MODE_64, &h) != CS_ERR_OK) return text;
  cs_insn* insn = nullptr;
  if ((*cs)->disasm(h, b.data(), b.size(), va, 1, &insn) == 1) {
    text = insn[0].mnemonic;
    if (insn[0].op_str[0] != '\0') text += std::string(" ") + insn[0].op_str;
    (*cs)->free(insn, 1);
  }
  (*cs)->close(&h);
  return text;
}

// Decodes whole instructions from the start of `b` until at least 5 bytes are covered. Plain
// code only: an int3 (a kprobe), a rel32 call or jump (ftrace, an optprobe, another tool), a
// return or ud2 (a function shorter than the jump) or bytes that do not decode end it with
// nullopt and `why`.
std::optional<std::pair<std::string, std::uint32_t>> DecodePlain(std::span<const std::uint8_t> b, std::uint64_t va,
                                                                 std::string& why) {
  Result<const CapstoneApi*> loaded = Capstone();
  if (!loaded.ok()) {
    why = loaded.status().message();
    return std::nullopt;
  }
  const CapstoneApi& cs = **loaded;
  csh h;
  if (cs.open(CS_ARCH_X86, CS_MODE_64, &h) != CS_ERR_OK) {
    why = "the disassembler did not start";
    return std::nullopt;
  }
  std::string text;
  std::uint32_t covered = 0;
  while (covered < 5) {
    cs_insn* insn = nullptr;
    if (cs.disasm(h, b.data() + covered, b.size() - covered, va + covered, 1, &insn) != 1) {
      why = "bytes at +" + std::to_string(covered) + " do not decode";
      cs.close(&h);
      return std::nullopt;
    }
    std::string one = insn[0].mnemonic;
    if (insn[0].op_str[0] != '\0') one += std::string(" ") + insn[0].op_str;
    const std::uint8_t op = insn[0].bytes[0];
    const bool ud2 = insn[0].size == 2 && op == 0x0f && insn[0].bytes[1] == 0x0b;
    const std::uint32_t size = insn[0].size;
    cs.free(insn, 1);
    if (op == 0xcc || op == 0xe8 || op == 0xe9 || op == 0xc3 || op == 0xc2 || ud2) {
      why = "'" + one + "' at +" + std::to_string(covered) + " under the jump";
      cs.close(&h);
      return std::nullopt;
    }
    if (!text.empty()) text += "; ";
    text += one;
    covered += size;
  }
  cs.close(&h);
  return std::make_pair(text, covered);
}

std::int32_t Rel32(std::span<const std::uint8_t> b) {
  std::int32_t v;
  std::memcpy(&v, b.data() + 1, 4);
  return v;
}

}  // namespace

std::string_view EntryKindName(EntryKind k) {
  switch (k) {
    case EntryKind::kFtraceNop: return "ftrace_nop";
    case EntryKind::kArenaJump: return "hvpatch_jump";
    case EntryKind::kCall: return "call";
    case EntryKind::kOtherJump: return "foreign_jump";
    case EntryKind::kPlainCode: return "plain_code";
    case EntryKind::kOther: return "other";
  }
  return "unknown";
}

Result<EntrySite> ClassifyEntry(std::span<const std::uint8_t> bytes, std::uint64_t va, AddressRange arena) {
  if (bytes.size() < sizeof(kEndbr64) + 5) {
    return InvalidArgument("entry of the function at " + Hex(va) + ": " + std::to_string(bytes.size()) +
                           " bytes given, at least 9 needed");
  }
  EntrySite s;
  s.function_va = va;
  s.endbr64 = std::equal(std::begin(kEndbr64), std::end(kEndbr64), bytes.begin());
  const std::size_t at = s.endbr64 ? sizeof(kEndbr64) : 0;
  s.site_va = va + at;
  const auto site = bytes.subspan(at);
  std::copy_n(site.begin(), 5, s.current.begin());
  s.instruction = Describe(site, s.site_va);
  if (std::equal(std::begin(kNop5), std::end(kNop5), site.begin())) {
    s.kind = EntryKind::kFtraceNop;
  } else if (site[0] == 0xe8 || site[0] == 0xe9) {
    s.target = s.site_va + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(Rel32(site)));
    if (site[0] == 0xe8) {
      s.kind = EntryKind::kCall;
    } else {
      s.kind = arena.Contains(s.target) ? EntryKind::kArenaJump : EntryKind::kOtherJump;
    }
  } else {
    std::string why;
    if (auto plain = DecodePlain(site, s.site_va, why)) {
      s.kind = EntryKind::kPlainCode;
      s.covered = plain->first;
      s.covered_size = plain->second;
    } else {
      s.kind = EntryKind::kOther;
      s.covered = why;
    }
  }
  return s;
}

Status CheckPatchable(const EntrySite& s, std::string_view function) {
  const std::string head = "function '" + std::string(function) + "' at " + Hex(s.function_va) +
                           " starts with '" + s.instruction + "', not the ftrace nop";
  switch (s.kind) {
    case EntryKind::kFtraceNop:
    case EntryKind::kArenaJump:
      return Status::Ok();
    case EntryKind::kCall:
      return FailedPrecondition(head + ": ftrace owns it (traced in the guest, or patched by an in-guest "
                                       "livepatch)");
    case EntryKind::kOtherJump:
      return FailedPrecondition(head + ": a jump outside hvpatch's arena (patched by another tool?)");
    case EntryKind::kPlainCode:
      return FailedPrecondition(head + " (0f 1f 44 00 00): plain code, which only the plain-entry proof "
                                       "may allow");
    case EntryKind::kOther:
      if (s.current[0] == 0xcc) {
        return FailedPrecondition(head + ": a breakpoint (a kprobe, or a kernel text_poke in progress)");
      }
      return FailedPrecondition(head + " (0f 1f 44 00 00): not an ftrace-patchable entry" +
                                (s.covered.empty() ? "" : ", nor plain code (" + s.covered + ")"));
  }
  return Internal("unknown entry kind");
}

}  // namespace hv::patcher
