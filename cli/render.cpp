#include "cli/render.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "base/hex.h"

namespace hv::cli {

nlohmann::json ApplyJson(const patcher::ApplyResult& r, const std::vector<std::string>& recovery) {
  nlohmann::json j;
  j["name"] = r.name;
  j["dry_run"] = r.dry_run;
  j["functions"] = nlohmann::json::array();
  for (const auto& f : r.functions) {
    nlohmann::json jf = {{"name", f.name},     {"object", f.object},     {"sympos", f.sympos},
                         {"old_addr", Hex(f.old_addr)}, {"site", Hex(f.site)},
                         {"new_addr", Hex(f.new_addr)}, {"entry", f.entry}};
    if (!f.stacked_on.empty()) jf["stacked_on"] = f.stacked_on;
    j["functions"].push_back(jf);
  }
  j["pause_us"] = r.commit.pause_us;
  j["tries"] = r.commit.tries;
  j["threads_scanned"] = r.commit.threads_scanned;
  j["bytes_scanned"] = r.commit.bytes_scanned;
  j["arena_pages"] = r.arena_pages;
  j["fentry_nops"] = r.fentry_nops;
  j["confirmed"] = r.confirmed;
  j["confirmation"] = r.confirmation;
  j["recovered"] = recovery;
  if (!r.replaced.empty()) {
    j["replaced"] = r.replaced;
    j["restored"] = r.restored;
  }
  return j;
}

std::string ApplyText(const patcher::ApplyResult& r) {
  std::string s;
  s += (r.dry_run ? "check passed for patch '" : "applied patch '") + r.name + "': " +
       std::to_string(r.functions.size()) + " function(s)";
  if (!r.dry_run) s += ", pause " + std::to_string(r.commit.pause_us) + " us";
  s += ", " + std::to_string(r.commit.tries) + " tr" + (r.commit.tries == 1 ? "y" : "ies") + ", " +
       std::to_string(r.commit.threads_scanned) + " threads / " +
       std::to_string(r.commit.bytes_scanned / 1024) + " KiB of stacks scanned\n";
  for (const auto& f : r.functions) {
    s += "  " + f.object + " " + f.name + " " + Hex(f.site) + " -> " + Hex(f.new_addr);
    if (!f.stacked_on.empty()) s += " (stacked on '" + f.stacked_on + "')";
    // No ftrace site: the jump replaced the function's first instructions (docs/build.md).
    if (f.entry == "plain_code") s += " (no ftrace site: first instructions replaced)";
    s += "\n";
  }
  if (!r.replaced.empty()) {
    // Atomic replace (docs/atomic-replace.md): say what went, and what runs the kernel's code.
    std::string names, restored;
    for (const auto& n : r.replaced) names += (names.empty() ? "'" : ", '") + n + "'";
    for (const auto& n : r.restored) restored += " " + n;
    s += std::string(r.dry_run ? "  would replace " : "  replaced ") + names + " (atomic replace)";
    s += r.restored.empty() ? "\n" : std::string(r.dry_run ? "; original code again would run in:" : "; original code again:") +
                                      restored + "\n";
  }
  if (!r.dry_run) s += "  confirmed: " + std::string(r.confirmed ? "yes" : "no") + " (" + r.confirmation + ")\n";
  return s;
}

Result<std::vector<std::uint8_t>> ReadPatchFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("opening patch '" + path + "'", errno);
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return InvalidArgument("patch '" + path + "' is not a regular file");
  }
  if (st.st_size > (64 << 20)) {
    close(fd);
    return InvalidArgument("patch '" + path + "' is over 64 MiB");
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = read(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      return ErrnoError("reading patch '" + path + "'", n == 0 ? EIO : err);
    }
    off += static_cast<std::size_t>(n);
  }
  close(fd);
  return bytes;
}

}  // namespace hv::cli
