#include "guest-agent/response_decoder.h"

#include "base/hex.h"
#include "guest-agent/error_code_map.h"

namespace hv::agent {

namespace pb = ::hvpatch::agent;

namespace {

bool Printable(std::string_view s) {
  for (char c : s) {
    if (c < ' ' || c > '~') return false;
  }
  return true;
}

// A text field: at most `max` printable ASCII characters, non-empty unless `may_be_empty`.
Status CheckText(std::string_view field, const std::string& s, size_t max, bool may_be_empty = false) {
  if (s.size() > max) {
    return InvalidArgument(std::string(field) + " of " + std::to_string(s.size()) +
                           " bytes (at most " + std::to_string(max) + ")");
  }
  if (s.empty() && !may_be_empty) return InvalidArgument(std::string(field) + " is empty");
  if (!Printable(s)) {
    return InvalidArgument(std::string(field) + " has non-printable characters");
  }
  return Status::Ok();
}

Status CheckCount(std::string_view what, size_t n, size_t max) {
  if (n > max) {
    return InvalidArgument(std::to_string(n) + " " + std::string(what) + " (at most " +
                           std::to_string(max) + ")");
  }
  return Status::Ok();
}

}  // namespace

Status DecodeError(const pb::Response& response) {
  if (!response.has_error()) return Status::Ok();
  std::string message = response.error().message().substr(0, kMaxErrorMessage);
  for (char& c : message) {
    if (c < ' ' || c > '~') c = '?';
  }
  if (message.empty()) message = "no message";
  return Status(FromWireCode(response.error().code()), "agent: " + message);
}

Result<AgentHello> DecodeHello(const pb::HelloResponse& hello) {
  AgentHello out;
  HV_RETURN_IF_ERROR(CheckText("release", hello.release(), kMaxReleaseLength));
  HV_RETURN_IF_ERROR(CheckText("agent version", hello.agent_version(), kMaxShortText, true));
  if (hello.build_id().size() > kMaxBuildIdLength) {
    return InvalidArgument("build-id of " + std::to_string(hello.build_id().size()) +
                           " bytes (at most " + std::to_string(kMaxBuildIdLength) + ")");
  }
  HV_RETURN_IF_ERROR(CheckCount("capabilities", static_cast<size_t>(hello.capabilities_size()),
                                kMaxCapabilities));
  for (const std::string& cap : hello.capabilities()) {
    HV_RETURN_IF_ERROR(CheckText("capability", cap, kMaxShortText));
    out.capabilities.push_back(cap);
  }
  out.release = hello.release();
  out.agent_version = hello.agent_version();
  out.build_id.assign(hello.build_id().begin(), hello.build_id().end());
  out.protocol_version = hello.protocol_version();
  return out;
}

Status AppendKallsyms(const pb::KallsymsChunk& chunk, size_t max_symbols,
                      std::vector<KernelSymbol>* out) {
  const size_t n = static_cast<size_t>(chunk.symbols_size());
  if (n > max_symbols || out->size() > max_symbols - n) {
    return InvalidArgument("more than " + std::to_string(max_symbols) + " symbols");
  }
  out->reserve(out->size() + n);
  for (const pb::Symbol& s : chunk.symbols()) {
    HV_RETURN_IF_ERROR(CheckText("symbol name", s.name(), kMaxSymbolName));
    HV_RETURN_IF_ERROR(CheckText("symbol module", s.module(), kMaxShortText, true)
                           .WithContext("symbol '" + s.name() + "'"));
    if (s.type().size() != 1 || !Printable(s.type()) || s.type()[0] == ' ') {
      return InvalidArgument("symbol '" + s.name() + "' has type '" +
                             (Printable(s.type()) ? s.type().substr(0, 8) : "?") +
                             "' (one letter expected)");
    }
    out->push_back({s.address(), s.type()[0], s.name(), s.module()});
  }
  return Status::Ok();
}

Result<LivepatchState> DecodeLivepatchState(const pb::LivepatchState& state) {
  LivepatchState out;
  out.available = state.available();
  HV_RETURN_IF_ERROR(CheckCount("patches", static_cast<size_t>(state.patches_size()), kMaxPatches));
  for (const pb::Patch& p : state.patches()) {
    LivepatchPatch patch;
    HV_RETURN_IF_ERROR(CheckText("patch name", p.name(), kMaxShortText));
    const std::string ctx = "patch '" + p.name() + "'";
    HV_RETURN_IF_ERROR(CheckCount("objects", static_cast<size_t>(p.objects_size()),
                                  kMaxObjectsPerPatch).WithContext(ctx));
    patch.name = p.name();
    patch.enabled = p.enabled();
    patch.transition = p.transition();
    patch.replace = p.replace();
    patch.stack_order = p.stack_order();
    for (const pb::Object& o : p.objects()) {
      LivepatchObject object;
      HV_RETURN_IF_ERROR(CheckText("object name", o.name(), kMaxShortText).WithContext(ctx));
      HV_RETURN_IF_ERROR(CheckCount("functions", static_cast<size_t>(o.functions_size()),
                                    kMaxFunctionsPerObject)
                             .WithContext(ctx + " object '" + o.name() + "'"));
      object.name = o.name();
      object.patched = o.patched();
      for (const pb::Function& f : o.functions()) {
        HV_RETURN_IF_ERROR(CheckText("function name", f.name(), kMaxSymbolName)
                               .WithContext(ctx + " object '" + o.name() + "'"));
        object.functions.push_back({f.name(), f.sympos()});
      }
      patch.objects.push_back(std::move(object));
    }
    out.patches.push_back(std::move(patch));
  }
  return out;
}

Result<FtraceState> DecodeFtraceState(const pb::FtraceState& state) {
  FtraceState out;
  out.available = state.available();
  HV_RETURN_IF_ERROR(CheckCount("ftrace entries", static_cast<size_t>(state.entries_size()),
                                kMaxFtraceEntries));
  out.entries.reserve(static_cast<size_t>(state.entries_size()));
  for (const pb::FtraceEntry& e : state.entries()) {
    HV_RETURN_IF_ERROR(CheckText("ftrace function", e.function(), kMaxSymbolName));
    const std::string ctx = "ftrace function '" + e.function() + "'";
    HV_RETURN_IF_ERROR(CheckText("module", e.module(), kMaxShortText, true).WithContext(ctx));
    HV_RETURN_IF_ERROR(CheckText("detail", e.detail(), kMaxDetail, true).WithContext(ctx));
    out.entries.push_back({e.function(), e.module(), e.refcount(), e.detail()});
  }
  return out;
}

Result<std::vector<uint8_t>> DecodeVerify(const pb::VerifyResponse& verify, uint64_t address,
                                          uint32_t length) {
  if (verify.address() != address) {
    return InvalidArgument("verify reply is for address " + Hex(verify.address()) + ", not " +
                           Hex(address));
  }
  if (verify.data().size() != length) {
    return InvalidArgument("verify reply has " + std::to_string(verify.data().size()) +
                           " bytes, " + std::to_string(length) + " requested");
  }
  return std::vector<uint8_t>(verify.data().begin(), verify.data().end());
}

Result<PublishResult> DecodePublish(const pb::PublishStateResponse& publish) {
  HV_RETURN_IF_ERROR(CheckText("state root", publish.root(), kMaxPath));
  HV_RETURN_IF_ERROR(CheckText("sysfs ABI", publish.sysfs_abi(), kMaxShortText));
  return PublishResult{publish.root(), publish.sysfs_abi()};
}

pb::Patch EncodePatch(const LivepatchPatch& patch) {
  pb::Patch p;
  p.set_name(patch.name);
  p.set_enabled(patch.enabled);
  p.set_transition(patch.transition);
  p.set_replace(patch.replace);
  p.set_stack_order(patch.stack_order);
  for (const LivepatchObject& o : patch.objects) {
    pb::Object* obj = p.add_objects();
    obj->set_name(o.name);
    obj->set_patched(o.patched);
    for (const LivepatchFunction& f : o.functions) {
      pb::Function* fn = obj->add_functions();
      fn->set_name(f.name);
      fn->set_sympos(f.sympos);
    }
  }
  return p;
}

}  // namespace hv::agent
