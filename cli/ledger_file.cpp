#include "cli/ledger_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/hex.h"

namespace hv::cli {
namespace {

using nlohmann::json;
using patcher::Ledger;

std::string EncodeBytes(const std::vector<std::uint8_t>& b) { return HexString(b); }

std::vector<std::uint8_t> DecodeBytes(const std::string& s) {
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i + 1 < s.size(); i += 2)
    out.push_back(static_cast<std::uint8_t>(std::stoul(s.substr(i, 2), nullptr, 16)));
  return out;
}

patcher::PatchState StateFromName(const std::string& s) {
  if (s == "applied") return patcher::PatchState::kApplied;
  if (s == "reverting") return patcher::PatchState::kReverting;
  if (s == "applying") return patcher::PatchState::kApplying;
  throw std::invalid_argument("unknown patch state '" + s + "'");
}

json ToJson(const Ledger& l) {
  json j;
  j["format"] = 2;
  j["vm"] = l.vm_identity;
  j["kernel_build_id"] = l.kernel_build_id;
  j["kaslr_offset"] = l.kaslr_offset;
  j["page_table_gpa"] = l.page_table_gpa;
  j["boot_mark"] = l.boot_mark;
  j["archived"] = json::array();
  for (const auto& a : l.archived) {
    j["archived"].push_back({{"path", a.path}, {"reason", a.reason}, {"at", a.at},
                             {"patches", a.patches}, {"arena_va", a.arena_va}});
  }
  j["paused_by_hvpatch"] = l.paused_by_hvpatch;
  j["was_running"] = l.was_running;
  j["arena"] = {{"mapped", l.arena.mapped},       {"base_va", l.arena.base_va},
                {"bar_gpa", l.arena.bar_gpa},     {"size", l.arena.size},
                {"pmd_entry_gpa", l.arena.pmd_entry_gpa}, {"pmd_entry", l.arena.pmd_entry},
                {"layout", l.arena.layout}, {"committed", l.arena.committed}};
  j["patches"] = json::array();
  for (const auto& p : l.patches) {
    json jp = {{"name", p.name}, {"build_id", p.build_id},
               {"state", std::string(patcher::PatchStateName(p.state))},
               {"applied_at", p.applied_at}};
    if (p.replace) jp["replace"] = true;
    if (!p.replaces.empty()) jp["replaces"] = p.replaces;
    jp["functions"] = json::array();
    for (const auto& f : p.functions) {
      jp["functions"].push_back({{"name", f.name}, {"object", f.object}, {"sympos", f.sympos},
                                 {"old_addr", f.old_addr}, {"old_size", f.old_size}, {"site", f.site},
                                 {"original", EncodeBytes(f.original)},
                                 {"trampoline", EncodeBytes(f.trampoline)},
                                 {"new_addr", f.new_addr}, {"new_size", f.new_size}});
    }
    j["patches"].push_back(std::move(jp));
  }
  return j;
}

Ledger FromJson(const json& j) {
  Ledger l;
  // Format 1 predates the boot identity: its missing parts read as unknown (0).
  const int format = j.at("format").get<int>();
  if (format != 1 && format != 2) throw std::invalid_argument("unknown ledger format " + std::to_string(format));
  l.vm_identity = j.at("vm").get<std::string>();
  l.kernel_build_id = j.at("kernel_build_id").get<std::string>();
  if (format >= 2) {
    l.kaslr_offset = j.at("kaslr_offset").get<std::uint64_t>();
    l.page_table_gpa = j.at("page_table_gpa").get<std::uint64_t>();
    l.boot_mark = j.at("boot_mark").get<std::uint64_t>();
    for (const auto& ja : j.at("archived")) {
      patcher::ArchivedLedger a;
      a.path = ja.at("path").get<std::string>();
      a.reason = ja.at("reason").get<std::string>();
      a.at = ja.at("at").get<std::int64_t>();
      a.patches = ja.at("patches").get<std::vector<std::string>>();
      a.arena_va = ja.at("arena_va").get<std::uint64_t>();
      l.archived.push_back(std::move(a));
    }
  }
  l.paused_by_hvpatch = j.at("paused_by_hvpatch").get<bool>();
  l.was_running = j.at("was_running").get<bool>();
  const json& a = j.at("arena");
  l.arena.mapped = a.at("mapped").get<bool>();
  l.arena.base_va = a.at("base_va").get<std::uint64_t>();
  l.arena.bar_gpa = a.at("bar_gpa").get<std::uint64_t>();
  l.arena.size = a.at("size").get<std::uint64_t>();
  l.arena.pmd_entry_gpa = a.at("pmd_entry_gpa").get<std::uint64_t>();
  l.arena.pmd_entry = a.at("pmd_entry").get<std::uint64_t>();
  l.arena.layout = a.at("layout").get<std::string>();
  // Format 1 had no flag: a mapping it kept was one a finished apply had written.
  l.arena.committed = format >= 2 ? a.at("committed").get<bool>() : l.arena.mapped;
  for (const auto& jp : j.at("patches")) {
    patcher::LedgerPatch p;
    p.name = jp.at("name").get<std::string>();
    p.build_id = jp.at("build_id").get<std::string>();
    p.state = StateFromName(jp.at("state").get<std::string>());
    p.applied_at = jp.at("applied_at").get<std::int64_t>();
    // Optional (absent in ledgers written before atomic replace, and for plain patches).
    p.replace = jp.value("replace", false);
    if (jp.contains("replaces")) p.replaces = jp.at("replaces").get<std::vector<std::string>>();
    for (const auto& jf : jp.at("functions")) {
      patcher::LedgerFunction f;
      f.name = jf.at("name").get<std::string>();
      f.object = jf.at("object").get<std::string>();
      f.sympos = jf.at("sympos").get<std::uint64_t>();
      f.old_addr = jf.at("old_addr").get<std::uint64_t>();
      f.old_size = jf.at("old_size").get<std::uint64_t>();
      f.site = jf.at("site").get<std::uint64_t>();
      f.original = DecodeBytes(jf.at("original").get<std::string>());
      f.trampoline = DecodeBytes(jf.at("trampoline").get<std::string>());
      f.new_addr = jf.at("new_addr").get<std::uint64_t>();
      f.new_size = jf.at("new_size").get<std::uint64_t>();
      p.functions.push_back(std::move(f));
    }
    l.patches.push_back(std::move(p));
  }
  return l;
}

Status WriteAllFd(int fd, const std::string& data, const std::string& path) {
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("writing '" + path + "'", errno);
    off += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

std::string StateDir(const std::string& override_dir) {
  if (!override_dir.empty()) return override_dir;
  const char* env = std::getenv("HVPATCH_STATE_DIR");
  return env && *env ? env : "/var/lib/hvpatch";
}

std::string StateFileStem(const std::string& vm_identity) {
  std::string s;
  for (char c : vm_identity) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    s += ok ? c : '_';
  }
  if (s.size() > 120) s = s.substr(s.size() - 120);
  return s.empty() ? "vm" : s;
}

Result<Ledger> LedgerFile::Load() {
  std::ifstream f(path_);
  if (!f) {
    if (errno == ENOENT) return Ledger{};
    return ErrnoError("opening ledger '" + path_ + "'", errno);
  }
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return FromJson(json::parse(ss.str()));
  } catch (const std::exception& e) {
    return InvalidArgument("ledger '" + path_ + "' is corrupt: " + e.what())
        .WithHint("move it aside only if you know the VM holds no hvpatch patches");
  }
}

Status LedgerFile::Save(const Ledger& ledger) {
  const std::string data = ToJson(ledger).dump(1) + "\n";
  const std::string tmp = path_ + ".tmp";
  const std::string dir = path_.substr(0, path_.rfind('/') == std::string::npos ? 0 : path_.rfind('/'));
  if (!dir.empty() && mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("creating state directory '" + dir + "'", errno);
  }
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("creating '" + tmp + "'", errno);
  Status s = WriteAllFd(fd, data, tmp);
  if (s.ok() && fsync(fd) != 0) s = ErrnoError("fsync '" + tmp + "'", errno);
  close(fd);
  if (!s.ok()) return s;
  if (rename(tmp.c_str(), path_.c_str()) != 0) return ErrnoError("renaming '" + tmp + "'", errno);
  int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return Status::Ok();
}

Result<std::string> LedgerFile::Archive() {
  // <stem>.json -> <stem>.archived-YYYYmmddTHHMMSSZ[-N].json: sorts by time, and never a name
  // that Load() reads.
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  std::string base = path_;
  if (base.size() > 5 && base.compare(base.size() - 5, 5, ".json") == 0) base.resize(base.size() - 5);
  std::string target = base + ".archived-" + stamp + ".json";
  for (int n = 1; access(target.c_str(), F_OK) == 0; ++n) {
    target = base + ".archived-" + stamp + "-" + std::to_string(n) + ".json";
  }
  if (rename(path_.c_str(), target.c_str()) != 0) {
    return ErrnoError("archiving ledger '" + path_ + "' as '" + target + "'", errno);
  }
  const std::string dir = path_.substr(0, path_.rfind('/') == std::string::npos ? 0 : path_.rfind('/'));
  int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return target;
}

}  // namespace hv::cli
