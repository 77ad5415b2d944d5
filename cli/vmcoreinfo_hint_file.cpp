#include "cli/vmcoreinfo_hint_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "base/hex.h"

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

Status VmcoreinfoHintFile::Save(std::uint64_t gpa) const {
  const std::string data = Hex(gpa) + "\n";
  const std::string dir = path_.substr(0, path_.rfind('/') == std::string::npos ? 0 : path_.rfind('/'));
  if (!dir.empty() && mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("creating '" + dir + "'", errno);
  }
  const std::string tmp = path_ + ".tmp." + std::to_string(getpid());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoError("creating '" + tmp + "'", errno);
  ssize_t n;
  do {
    n = write(fd, data.data(), data.size());
  } while (n < 0 && errno == EINTR);
  const int err = n < 0 ? errno : EIO;
  close(fd);
  if (n != static_cast<ssize_t>(data.size())) {
    unlink(tmp.c_str());
    return ErrnoError("writing '" + tmp + "'", err);
  }
  if (rename(tmp.c_str(), path_.c_str()) != 0) {
    const int rename_err = errno;
    unlink(tmp.c_str());
    return ErrnoError("renaming '" + tmp + "'", rename_err);
  }
  return Status::Ok();
}

}  // namespace hv::cli
