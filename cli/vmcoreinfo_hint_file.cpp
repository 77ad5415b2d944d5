#include "cli/vmcoreinfo_hint_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "base/hex.h"
#include "cli/replace_file.h"

namespace hv::cli {
namespace {
// "0x" + 16 hex digits + "\n", with room to spare; anything longer is not a hint.
constexpr std::size_t kMaxBytes = 64;
}  // namespace

std::optional<std::uint64_t> VmcoreinfoHintFile::Load() const {
  const int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return std::nullopt;
  char buf[kMaxBytes + 1];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof buf);
  } while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0 || static_cast<std::size_t>(n) > kMaxBytes) return std::nullopt;
  std::string_view text(buf, static_cast<std::size_t>(n));
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  if (text.substr(0, 2) != "0x") return std::nullopt;
  text.remove_prefix(2);
  std::uint64_t gpa = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), gpa, 16);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return gpa;
}

Status VmcoreinfoHintFile::Save(std::uint64_t gpa) const { return ReplaceFile(path_, Hex(gpa) + "\n"); }

}  // namespace hv::cli
