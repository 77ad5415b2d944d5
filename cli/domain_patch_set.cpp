#include "cli/domain_patch_set.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/ledger_file.h"

namespace hv::cli {

namespace {

Status WriteFileAtomic(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("creating '" + tmp + "'", errno);
  std::size_t off = 0;
  Status s;
  while (off < data.size()) {
    const ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      s = ErrnoError("writing '" + tmp + "'", errno);
      break;
    }
    off += static_cast<std::size_t>(n);
  }
  if (s.ok() && fsync(fd) != 0) s = ErrnoError("fsync '" + tmp + "'", errno);
  close(fd);
  if (!s.ok()) return s;
  if (rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("renaming '" + tmp + "'", errno);
  return Status::Ok();
}

Status MakeDirs(const std::string& path) {
  for (std::size_t at = 1; at != std::string::npos;) {
    at = path.find('/', at + 1);
    const std::string part = path.substr(0, at);
    if (mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("creating '" + part + "'", errno);
  }
  return Status::Ok();
}

}  // namespace

DomainPatchSet::DomainPatchSet(const std::string& state_dir, const std::string& domain_uuid)
    : dir_(state_dir + "/domains/" + StateFileStem(domain_uuid)) {}

Result<std::vector<PatchSetEntry>> DomainPatchSet::Load() const {
  const std::string path = dir_ + "/set.json";
  std::ifstream f(path);
  if (!f) {
    if (errno == ENOENT) return std::vector<PatchSetEntry>{};
    return ErrnoError("opening '" + path + "'", errno);
  }
  std::stringstream ss;
  ss << f.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (!j.is_object() || !j.contains("patches") || !j["patches"].is_array()) {
    return InvalidArgument("'" + path + "' is not a patch set");
  }
  std::vector<PatchSetEntry> out;
  for (const auto& p : j["patches"]) {
    if (!p.is_object() || !p.contains("name") || !p["name"].is_string() || !p.contains("file") ||
        !p["file"].is_string()) {
      return InvalidArgument("'" + path + "' has a malformed entry");
    }
    out.push_back({p["name"].get<std::string>(), dir_ + "/" + p["file"].get<std::string>()});
  }
  return out;
}

Status DomainPatchSet::Save(const std::string& domain_name, const std::vector<PatchSetEntry>& entries) const {
  nlohmann::json j = {{"domain", domain_name}, {"patches", nlohmann::json::array()}};
  for (const auto& e : entries) {
    j["patches"].push_back({{"name", e.name}, {"file", e.file.substr(e.file.rfind('/') + 1)}});
  }
  return WriteFileAtomic(dir_ + "/set.json", j.dump(1) + "\n");
}

Status DomainPatchSet::Add(const std::string& domain_name, const std::string& name,
                           const std::vector<std::uint8_t>& module) {
  HV_RETURN_IF_ERROR(MakeDirs(dir_));
  HV_ASSIGN_OR_RETURN(std::vector<PatchSetEntry> entries, Load());
  entries.erase(std::remove_if(entries.begin(), entries.end(), [&](const PatchSetEntry& e) { return e.name == name; }),
                entries.end());
  const std::string copy = dir_ + "/" + StateFileStem(name) + ".ko";
  HV_RETURN_IF_ERROR(WriteFileAtomic(copy, std::string(module.begin(), module.end())));
  entries.push_back({name, copy});
  return Save(domain_name, entries);
}

Status DomainPatchSet::Remove(const std::string& name) {
  HV_ASSIGN_OR_RETURN(std::vector<PatchSetEntry> entries, Load());
  const auto it = std::find_if(entries.begin(), entries.end(), [&](const PatchSetEntry& e) { return e.name == name; });
  if (it == entries.end()) return Status::Ok();
  const std::string file = it->file;
  entries.erase(it);
  std::string domain_name;
  {
    std::ifstream f(dir_ + "/set.json");
    std::stringstream ss;
    ss << f.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_object() && j.contains("domain") && j["domain"].is_string()) domain_name = j["domain"];
  }
  HV_RETURN_IF_ERROR(Save(domain_name, entries));
  unlink(file.c_str());
  return Status::Ok();
}

void DomainPatchSet::Log(const std::string& line) const {
  if (!MakeDirs(dir_).ok()) return;
  std::ofstream f(log_path(), std::ios::app);
  char when[32] = "?";
  const std::time_t t = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
  f << when << " UTC " << line << "\n";
}

}  // namespace hv::cli
