// hvpatch build [DOMAIN] [--kernel RELEASE] [--source DIR --config FILE] [--name NAME]
//               [--cache DIR] -o OUT.ko FIX.diff
// A livepatch module from a kernel source diff (builder/, docs/build.md). The kernel is named by
// its release (`uname -r` in the guest), or read from DOMAIN's memory.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/hex.h"

#include "builder/patch_build.h"
#include "cli/command.h"
#include "cli/ledger_file.h"
#include "cli/session.h"

namespace hv::cli {

extern const Command kBuildCommand;

static int RunBuild(const GlobalOptions& o, const std::vector<std::string>& args) {
  builder::BuildRequest q;
  std::vector<std::string> positional;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    bool ok = true;
    if (a == "--source") ok = value(&q.source_dir);
    else if (a == "--config") ok = value(&q.config);
    else if (a == "--kernel") ok = value(&q.release);
    else if (a == "--name") ok = value(&q.name);
    else if (a == "--cache") ok = value(&q.cache_dir);
    else if (a == "-o") ok = value(&q.output);
    else if (!a.empty() && a[0] == '-') return UsageError(kBuildCommand, "unknown option '" + a + "'");
    else positional.push_back(a);
    if (!ok) return UsageError(kBuildCommand, "option '" + a + "' needs a value");
  }
  if (q.cache_dir.empty()) {
    const char* env = std::getenv("HVPATCH_BUILD_CACHE");
    q.cache_dir = env && *env ? env : StateDir(o.state_dir) + "/build";
  }
  if (positional.empty()) return UsageError(kBuildCommand, "expected FIX.diff");
  if (positional.size() > 2) return UsageError(kBuildCommand, "expected [DOMAIN] FIX.diff");
  q.diff = positional.back();
  if (positional.size() == 2) {
    // The running kernel's release, from the guest's memory (vmcoreinfo's OSRELEASE).
    if (!q.release.empty()) return UsageError(kBuildCommand, "give DOMAIN or --kernel, not both");
    auto session = OpenSession(o, positional[0], false);
    if (!session.ok()) return ReportError(o, session.status());
    q.release = (*session)->kernel->Summary().release;
    // The guest's own kallsyms gives static symbols their sympos (Debian ships no System.map).
    if (q.system_map.empty()) {
      std::string map;
      for (const auto& sym : (*session)->kernel->symbols().symbols()) {
        if (!sym.module.empty()) continue;
        map += Hex(sym.address).substr(2) + " " + sym.type + " " + std::string(sym.name) + "\n";
      }
      std::error_code ec;
      std::filesystem::create_directories(q.cache_dir, ec);
      q.system_map = q.cache_dir + "/kallsyms-" + q.release;
      std::ofstream(q.system_map) << map;
    }
  }
  if (q.output.empty()) return UsageError(kBuildCommand, "expected -o OUT.ko");
  if (q.release.empty() && q.source_dir.empty()) {
    return UsageError(kBuildCommand, "expected --kernel RELEASE, or --source DIR and --config FILE");
  }
  // With --source, --kernel only names the release (the modules' vermagic); nothing is fetched.
  if (!o.system_map.empty()) q.system_map = o.system_map;
  auto r = builder::BuildLivePatch(q);
  if (!r.ok()) return ReportError(o, r.status());
  if (o.json) {
    nlohmann::json j = {{"module", r->module}, {"replaced", r->replaced}, {"carried", r->carried},
                        {"tree_cached", r->tree_cached}, {"prepare_seconds", r->prepare_seconds},
                        {"build_seconds", r->build_seconds}, {"log", r->log}};
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("built %s\n", r->module.c_str());
  for (const auto& f : r->replaced) std::printf("  replaces %s\n", f.c_str());
  for (const auto& c : r->carried) std::printf("  carries %s\n", c.c_str());
  std::printf("  tree %s, build %.1f s (log %s)\n",
              r->tree_cached ? "cached" : ("prepared in " + std::to_string(static_cast<int>(r->prepare_seconds)) + " s").c_str(),
              r->build_seconds, r->log.c_str());
  return kExitOk;
}

const Command kBuildCommand = {
    "build", RunBuild,
    "build [DOMAIN | --kernel RELEASE] [--source DIR --config FILE] [--name NAME] [--cache DIR] -o OUT.ko FIX.diff",
    "a livepatch module from a kernel source diff (run-pre matched at apply)"};

}  // namespace hv::cli
