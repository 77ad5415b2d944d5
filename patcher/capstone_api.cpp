#include "patcher/capstone_api.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <thread>

// The runtime library's soname follows the API's major version (Debian 12: libcapstone.so.4).
#define HV_STRINGIFY_(x) #x
#define HV_STRINGIFY(x) HV_STRINGIFY_(x)
#define HV_CAPSTONE_SONAME "libcapstone.so." HV_STRINGIFY(CS_API_MAJOR)

namespace hv::patcher {
namespace {

// Never destroyed: a detached preload may still be inside Load while the process exits.
struct Loaded {
  CapstoneApi api{};
  Status status = Status::Ok();
};

Loaded* Load() {
  auto* out = new Loaded();
  void* lib = dlopen(HV_CAPSTONE_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    out->status = Unavailable(std::string("loading the disassembler ") + HV_CAPSTONE_SONAME + ": " + (why ? why : "?"))
                      .WithHint("install Debian's libcapstone4 (scripts/install-deps.sh does)");
    return out;
  }
  bool all = true;
  auto get = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    all = all && fn != nullptr;
  };
  get(out->api.open, "cs_open");
  get(out->api.close, "cs_close");
  get(out->api.option, "cs_option");
  get(out->api.disasm, "cs_disasm");
  get(out->api.free, "cs_free");
  get(out->api.malloc, "cs_malloc");
  get(out->api.disasm_iter, "cs_disasm_iter");
  if (!all) out->status = Unavailable(std::string(HV_CAPSTONE_SONAME) + " lacks a cs_* entry point hvpatch uses");
  return out;
}

std::once_flag once;
Loaded* loaded = nullptr;

}  // namespace

Result<const CapstoneApi*> Capstone() {
  std::call_once(once, [] { loaded = Load(); });
  if (!loaded->status.ok()) return loaded->status;
  return &loaded->api;
}

void PreloadCapstone() {
  std::thread([] { (void)Capstone(); }).detach();
}

}  // namespace hv::patcher
