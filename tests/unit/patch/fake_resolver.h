// A SymbolResolver over a fixed table, standing in for the guest's kallsyms.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "patcher/symbol_resolver.h"

namespace hv::patcher::testing {

class FakeResolver : public SymbolResolver {
 public:
  // Adds one occurrence of `name` in `object` ("vmlinux" or a module).
  FakeResolver& Add(const std::string& name, std::uint64_t address, std::uint64_t size = 0x100,
                    const std::string& object = "vmlinux", bool per_cpu = false) {
    table_[name].push_back({object, {address, size, per_cpu}});
    return *this;
  }

  Result<ResolvedSymbol> Resolve(std::string_view name, std::string_view object,
                                 std::uint64_t sympos) const override {
    ++lookups;
    auto it = table_.find(std::string(name));
    std::vector<ResolvedSymbol> hits;
    if (it != table_.end()) {
      // "" searches vmlinux first, then modules.
      for (int pass = 0; pass < 2; ++pass) {
        for (const auto& [obj, sym] : it->second) {
          const bool match = object.empty() ? ((pass == 0) == (obj == "vmlinux")) : (pass == 0 && obj == object);
          if (match) hits.push_back(sym);
        }
        if (object.empty() && !hits.empty()) break;
      }
    }
    const std::string where = object.empty() ? "any object" : "'" + std::string(object) + "'";
    if (hits.empty()) return NotFound("symbol '" + std::string(name) + "' not found in " + where);
    if (sympos == 0) {
      if (hits.size() > 1) return InvalidArgument("symbol '" + std::string(name) + "' is ambiguous in " + where);
      return hits[0];
    }
    if (sympos > hits.size()) {
      return NotFound("symbol '" + std::string(name) + "' has no occurrence " + std::to_string(sympos));
    }
    return hits[sympos - 1];
  }

  mutable int lookups = 0;

 private:
  std::map<std::string, std::vector<std::pair<std::string, ResolvedSymbol>>> table_;
};

// Plausible 6.1 guest addresses (KASLR-shifted kernel text, modules above 0xffffffffc0000000).
inline FakeResolver GuestSymbols() {
  FakeResolver r;
  r.Add("seq_printf", 0xffffffff81234560)
      .Add("seq_puts", 0xffffffff81234700)
      .Add("__x86_return_thunk", 0xffffffff82001234)
      .Add("__x86_indirect_thunk_rax", 0xffffffff82001000)
      .Add("__stack_chk_fail", 0xffffffff81f00000)
      .Add("cmdline_proc_show", 0xffffffff81300000, 0x40)
      .Add("version_proc_show", 0xffffffff81300100, 0x50)
      .Add("do_nanosleep", 0xffffffff81e00000, 0x180)
      .Add("hrtimer_sleeper_start_expires", 0xffffffff81150000)
      .Add("hrtimer_cancel", 0xffffffff81150200)
      .Add("schedule", 0xffffffff81e10000)
      .Add("ns_to_timespec64", 0xffffffff81140000)
      .Add("nanosleep_copyout", 0xffffffff81140100)
      .Add("nr_processes", 0xffffffff81080000)
      .Add("nr_threads", 0xffffffff82a00010, 4)
      .Add("current_task", 0x1fdc0, 8, "vmlinux", /*per_cpu=*/true)
      .Add("port_debugfs_show", 0xffffffffc0201000, 0xeb, "virtio_console");
  return r;
}

}  // namespace hv::patcher::testing
