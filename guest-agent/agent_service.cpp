#include "guest-agent/agent_service.h"

#include <sys/utsname.h>

#include <charconv>
#include <fstream>
#include <iterator>
#include <sstream>

#include "guest-agent/error_code_map.h"
#include "guest-agent/kcore_reader.h"
#include "guest-agent/kernel_notes.h"
#include "guest-agent/livepatch_tree.h"
#include "guest-agent/wire_format.h"

#ifndef HVPATCH_AGENT_VERSION
#define HVPATCH_AGENT_VERSION "unknown"
#endif

namespace hv::agent {

namespace pb = ::hvpatch::agent;

namespace {

// Verify reads at most a page: enough for any entry check.
constexpr uint32_t kMaxVerifyLength = 4096;
// A kallsyms chunk is sent once its symbols take about this much, far below kMaxResponsePayload.
constexpr size_t kKallsymsChunkBytes = 256 * 1024;
// Lines longer than this are not kallsyms or tracefs lines (KSYM_NAME_LEN is 512).
constexpr size_t kMaxLine = 2048;
constexpr size_t kMaxFtraceEntries = 200000;
constexpr size_t kMaxNotesBytes = 64 * 1024;

Result<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open '" + path + "'");
  std::string data;
  data.resize(limit);
  in.read(data.data(), static_cast<std::streamsize>(limit));
  data.resize(static_cast<size_t>(in.gcount()));
  return data;
}

std::string Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// "ffffffff81000000 T _stext" or "ffffffffc0201000 t fn\t[module]".
bool ParseKallsymsLine(std::string_view line, pb::Symbol* sym) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 + 3 > line.size() || line[sp1 + 2] != ' ') return false;
  uint64_t address = 0;
  auto [ptr, ec] = std::from_chars(line.data(), line.data() + sp1, address, 16);
  if (ec != std::errc() || ptr != line.data() + sp1) return false;
  std::string_view rest = line.substr(sp1 + 3);
  std::string_view module;
  const size_t tab = rest.find('\t');
  if (tab != std::string_view::npos) {
    module = rest.substr(tab + 1);
    rest = rest.substr(0, tab);
    if (module.size() >= 2 && module.front() == '[' && module.back() == ']') {
      module = module.substr(1, module.size() - 2);
    }
  }
  if (rest.empty()) return false;
  sym->set_address(address);
  sym->set_type(std::string(1, line[sp1 + 1]));
  sym->set_name(std::string(rest));
  sym->set_module(std::string(module));
  return true;
}

// "cmdline_proc_show (1) R I  \ttramp: 0x... (klp_ftrace_handler+0x0/0x1a0) ->..."
// or "fn [module] (1) ...". Continuation lines start with whitespace.
bool ParseEnabledFunctionsLine(std::string_view line, pb::FtraceEntry* entry) {
  size_t sp = line.find_first_of(" \t");
  entry->set_function(std::string(line.substr(0, sp)));
  std::string_view rest = sp == std::string_view::npos ? std::string_view() : line.substr(sp);
  rest.remove_prefix(std::min(rest.size(), rest.find_first_not_of(" \t")));
  if (!rest.empty() && rest.front() == '[') {
    const size_t close = rest.find(']');
    if (close != std::string_view::npos) {
      entry->set_module(std::string(rest.substr(1, close - 1)));
      rest.remove_prefix(close + 1);
      rest.remove_prefix(std::min(rest.size(), rest.find_first_not_of(" \t")));
    }
  }
  if (!rest.empty() && rest.front() == '(') {
    uint32_t count = 0;
    auto [ptr, ec] = std::from_chars(rest.data() + 1, rest.data() + rest.size(), count);
    if (ec == std::errc() && ptr < rest.data() + rest.size() && *ptr == ')') {
      entry->set_refcount(count);
      rest.remove_prefix(static_cast<size_t>(ptr + 1 - rest.data()));
    }
  }
  std::string detail = Trim(rest);
  // tracefs separates the trampoline with a tab; the host accepts printable text only.
  for (char& c : detail) {
    if (c == '\t') c = ' ';
  }
  entry->set_detail(std::move(detail));
  return !entry->function().empty();
}

pb::Response ErrorResponse(uint64_t id, const Status& status) {
  pb::Response r;
  r.set_id(id);
  r.mutable_error()->set_code(ToWireCode(status.code()));
  r.mutable_error()->set_message(status.message());
  return r;
}

}  // namespace

std::string AgentService::Release() const {
  auto text = ReadSmallFile(paths_.proc_root + "/sys/kernel/osrelease", 256);
  if (text.ok() && !Trim(*text).empty()) return Trim(*text);
  struct utsname u;
  if (uname(&u) == 0) return u.release;
  return {};
}

Result<pb::HelloResponse> AgentService::Hello() const {
  pb::HelloResponse hello;
  hello.set_release(Release());
  hello.set_agent_version(HVPATCH_AGENT_VERSION);
  hello.set_protocol_version(kProtocolVersion);
  auto notes = ReadSmallFile(paths_.sys_root + "/kernel/notes", kMaxNotesBytes);
  if (notes.ok()) {
    auto id = FindGnuBuildId(*notes);
    if (id.ok()) hello.set_build_id(*id);
  }
  for (const char* cap : {"kallsyms", "livepatch_state", "ftrace_state", "verify", "publish_state"}) {
    hello.add_capabilities(cap);
  }
  hello.add_capabilities("sysfs_abi=" + SysfsAbi::ForRelease(hello.release()).name);
  return hello;
}

Status AgentService::StreamKallsyms(uint64_t id, const Sink& send) const {
  const std::string path = paths_.proc_root + "/kallsyms";
  std::ifstream in(path);
  if (!in) return send(ErrorResponse(id, NotFound("cannot open '" + path + "'")));
  pb::Response chunk;
  chunk.set_id(id);
  size_t bytes = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > kMaxLine) continue;
    pb::Symbol* sym = chunk.mutable_kallsyms()->add_symbols();
    if (!ParseKallsymsLine(line, sym)) {
      chunk.mutable_kallsyms()->mutable_symbols()->RemoveLast();
      continue;
    }
    bytes += line.size() + 8;
    if (bytes >= kKallsymsChunkBytes) {
      HV_RETURN_IF_ERROR(send(chunk));
      chunk.mutable_kallsyms()->clear_symbols();
      bytes = 0;
    }
  }
  chunk.mutable_kallsyms()->set_last(true);
  return send(chunk);
}

Result<pb::FtraceState> AgentService::Ftrace() const {
  pb::FtraceState state;
  std::ifstream in;
  for (const char* dir : {"/kernel/tracing", "/kernel/debug/tracing"}) {
    in.open(paths_.sys_root + dir + "/enabled_functions");
    if (in) break;
    in.clear();
  }
  if (!in.is_open()) {
    state.set_available(false);
    return state;
  }
  state.set_available(true);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > kMaxLine || line.empty()) continue;
    if (line.front() == ' ' || line.front() == '\t') {
      // A continuation (e.g. a direct call target) belongs to the entry above.
      if (state.entries_size() > 0) {
        pb::FtraceEntry* last = state.mutable_entries(state.entries_size() - 1);
        std::string more = Trim(line);
        for (char& c : more) {
          if (c == '\t') c = ' ';
        }
        if (last->detail().size() + more.size() < 1000) last->set_detail(last->detail() + " " + more);
      }
      continue;
    }
    if (static_cast<size_t>(state.entries_size()) >= kMaxFtraceEntries) break;
    pb::FtraceEntry entry;
    if (ParseEnabledFunctionsLine(line, &entry)) *state.add_entries() = std::move(entry);
  }
  return state;
}

Result<pb::VerifyResponse> AgentService::Verify(const pb::VerifyRequest& req) const {
  if (req.length() == 0 || req.length() > kMaxVerifyLength) {
    return InvalidArgument("verify length " + std::to_string(req.length()) + " (1.." +
                           std::to_string(kMaxVerifyLength) + " allowed)");
  }
  HV_ASSIGN_OR_RETURN(KcoreReader kcore, KcoreReader::Open(paths_.proc_root + "/kcore"));
  HV_ASSIGN_OR_RETURN(std::string data, kcore.Read(req.address(), req.length()));
  pb::VerifyResponse resp;
  resp.set_address(req.address());
  resp.set_data(std::move(data));
  return resp;
}

Result<pb::PublishStateResponse> AgentService::Publish(const pb::PublishStateRequest& req) const {
  ParityTree tree(paths_.state_root, SysfsAbi::ForRelease(Release()));
  HV_RETURN_IF_ERROR(tree.Publish(req.patches()));
  pb::PublishStateResponse resp;
  resp.set_root(tree.root());
  resp.set_sysfs_abi(tree.abi().name);
  return resp;
}

Status AgentService::Handle(const pb::Request& request, const Sink& send) {
  const uint64_t id = request.id();
  pb::Response r;
  r.set_id(id);
  switch (request.body_case()) {
    case pb::Request::kHello: {
      auto hello = Hello();
      if (!hello.ok()) return send(ErrorResponse(id, hello.status()));
      *r.mutable_hello() = std::move(*hello);
      return send(r);
    }
    case pb::Request::kKallsyms:
      return StreamKallsyms(id, send);
    case pb::Request::kLivepatchState: {
      const bool published = request.livepatch_state().published();
      auto state = ReadLivepatchSysfs(published ? paths_.state_root : paths_.sys_root + "/kernel/livepatch");
      if (!state.ok()) return send(ErrorResponse(id, state.status()));
      *r.mutable_livepatch_state() = std::move(*state);
      return send(r);
    }
    case pb::Request::kFtraceState: {
      auto state = Ftrace();
      if (!state.ok()) return send(ErrorResponse(id, state.status()));
      *r.mutable_ftrace_state() = std::move(*state);
      return send(r);
    }
    case pb::Request::kVerify: {
      auto v = Verify(request.verify());
      if (!v.ok()) return send(ErrorResponse(id, v.status()));
      *r.mutable_verify() = std::move(*v);
      return send(r);
    }
    case pb::Request::kPublishState: {
      auto p = Publish(request.publish_state());
      if (!p.ok()) return send(ErrorResponse(id, p.status()));
      *r.mutable_publish_state() = std::move(*p);
      return send(r);
    }
    case pb::Request::kSync:
      // The server answers syncs itself (they need the delimiter).
      return send(ErrorResponse(id, Internal("sync reached the request handler")));
    case pb::Request::BODY_NOT_SET:
      break;
  }
  return send(ErrorResponse(id, Unimplemented("request without a known body")));
}

}  // namespace hv::agent
