// hvpatch info DOMAIN: what hvpatch reads about the guest kernel from memory alone.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "base/hex.h"
#include "cli/command.h"
#include "cli/session.h"

namespace hv::cli {

extern const Command kInfoCommand;

static int RunInfo(const GlobalOptions& o, const std::vector<std::string>& args) {
  if (args.size() != 1) return UsageError(kInfoCommand, "expected DOMAIN");
  auto session = OpenSession(o, args[0], false);
  if (!session.ok()) return ReportError(o, session.status());
  auto& s = **session;
  const patcher::GuestKernelSummary k = s.kernel->Summary();
  auto vcpus = [&]() -> Result<std::vector<vmm::VcpuState>> {
    HV_RETURN_IF_ERROR(s.vm->Pause());
    auto v = s.vm->VcpuStates();
    HV_RETURN_IF_ERROR(s.vm->Resume());
    return v;
  }();
  auto arena = s.vm->Arena();
  auto ledger = s.ledger->Load();
  auto running = s.vm->Running();
  nlohmann::json j = {{"release", k.release},
                      {"build_id", k.build_id},
                      {"kaslr_offset", Hex(k.kaslr_offset)},
                      {"symbols", k.symbols},
                      {"vmlinux_symbols", k.vmlinux_symbols},
                      {"symbol_source", k.symbol_source},
                      {"symbol_cache", k.symbol_cache},
                      {"btf_cache", k.btf_cache},
                      {"modules", k.modules},
                      {"cpus", k.cpus},
                      {"thread_size", k.thread_size},
                      {"vmcoreinfo_gpa", Hex(k.vmcoreinfo_gpa)},
                      {"vmcoreinfo_source", k.vmcoreinfo_source},
                      {"vm", s.vm->Describe()},
                      {"ram_access", s.vm->RamAccess()},
                      {"running", running.ok() && *running}};
  if (vcpus.ok()) {
    j["vcpus"] = nlohmann::json::array();
    for (const auto& v : *vcpus) {
      j["vcpus"].push_back({{"index", v.index}, {"rip", Hex(v.rip)}, {"cr3", Hex(v.cr3)},
                            {"mode", v.in_kernel() ? "kernel" : "user"}});
    }
  }
  if (arena.ok()) {
    j["arena"] = {{"bar_gpa", Hex(arena->bar_gpa)}, {"size", arena->size}, {"pci", arena->pci_address}};
  } else {
    j["arena"] = nullptr;
    j["arena_error"] = arena.status().message();
  }
  j["patches"] = ledger.ok() ? ledger->patches.size() : 0;
  if (!s.vmcoreinfo_hint_note.empty()) j["vmcoreinfo_hint_not_saved"] = s.vmcoreinfo_hint_note;
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("guest kernel    %s\nbuild-id        %s\nKASLR offset    %s\n", k.release.c_str(),
              k.build_id.c_str(), Hex(k.kaslr_offset).c_str());
  std::printf("symbols         %zu (%zu vmlinux, from %s)\nmodules         %zu:", k.symbols,
              k.vmlinux_symbols, k.symbol_source.c_str(), k.modules.size());
  for (const auto& m : k.modules) std::printf(" %s", m.c_str());
  std::printf("\ncpus            %d\n", k.cpus);
  if (!k.symbol_cache.empty() || !k.btf_cache.empty()) {
    std::printf("warm start      kallsyms %s; BTF %s\n", k.symbol_cache.c_str(), k.btf_cache.c_str());
  }
  std::printf("vmcoreinfo      %s (%s)\n", Hex(k.vmcoreinfo_gpa).c_str(), k.vmcoreinfo_source.c_str());
  if (!s.vmcoreinfo_hint_note.empty()) {
    std::printf("                (location not saved for the next run: %s)\n", s.vmcoreinfo_hint_note.c_str());
  }
  const std::string ram = s.vm->RamAccess();
  if (!ram.empty()) {
    std::printf("guest RAM       %s\n", ram.c_str());
    if (ram.rfind("mapped", 0) != 0) {
      std::printf("                (the pause grows with the guest's threads; shared guest RAM is mapped instead:\n"
                  "                 docs/performance.md)\n");
    }
  }
  if (arena.ok()) {
    std::printf("arena           %s, %llu KiB at %s\n", arena->pci_address.c_str(),
                static_cast<unsigned long long>(arena->size / 1024), Hex(arena->bar_gpa).c_str());
  } else {
    std::printf("arena           none (%s)\n", arena.status().message().c_str());
  }
  std::printf("hvpatch patches %zu\n", ledger.ok() ? ledger->patches.size() : 0);
  return kExitOk;
}

const Command kInfoCommand = {"info", RunInfo, "info DOMAIN",
                              "the guest kernel as read from memory: release, build-id, KASLR, symbols"};

}  // namespace hv::cli
