// Fuzz target: the host side of the agent protocol fed with hostile agent bytes. The stream goes
// through the sync scan and the frame decoder, every frame through protobuf parsing and the
// validating decoders (guest-agent/response_decoder.h). Nothing may crash, hang or grow unbounded.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "guest-agent/hvpatch_agent.pb.h"
#include "guest-agent/response_decoder.h"
#include "guest-agent/wire_format.h"

namespace {

namespace pb = ::hvpatch::agent;
using hv::agent::FrameDecoder;

void DecodeAll(const pb::Response& r) {
  (void)hv::agent::DecodeError(r);
  switch (r.body_case()) {
    case pb::Response::kHello: (void)hv::agent::DecodeHello(r.hello()); break;
    case pb::Response::kKallsyms: {
      std::vector<hv::agent::KernelSymbol> symbols;
      (void)hv::agent::AppendKallsyms(r.kallsyms(), 1000, &symbols);
      break;
    }
    case pb::Response::kLivepatchState: (void)hv::agent::DecodeLivepatchState(r.livepatch_state()); break;
    case pb::Response::kFtraceState: (void)hv::agent::DecodeFtraceState(r.ftrace_state()); break;
    case pb::Response::kVerify: (void)hv::agent::DecodeVerify(r.verify(), r.verify().address(), 5); break;
    case pb::Response::kPublishState: (void)hv::agent::DecodePublish(r.publish_state()); break;
    default: break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks how the stream is cut into reads, as a socket would.
  const size_t step = 1 + data[0] % 64;
  std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);

  FrameDecoder decoder(hv::agent::kMaxResponsePayload);
  bool synced = false;
  int frames = 0;
  for (size_t off = 0; off < stream.size(); off += step) {
    decoder.Append(stream.substr(off, step));
    if (!synced) {
      synced = decoder.FindSync(hv::agent::kMaxSyncPayload, [](std::string_view c) {
        pb::Response r;
        return r.ParseFromArray(c.data(), static_cast<int>(c.size())) && r.has_sync() &&
               r.sync().nonce() == 0x1122334455667788ull;
      });
      if (!synced) continue;
    }
    for (;;) {
      std::string payload, why;
      const FrameDecoder::Outcome o = decoder.Next(&payload, &why);
      if (o == FrameDecoder::Outcome::kNeedMore) break;
      if (o == FrameDecoder::Outcome::kMalformed) {
        decoder.SkipToDelimiter();
        synced = false;
        break;
      }
      pb::Response r;
      if (r.ParseFromString(payload)) DecodeAll(r);
      else decoder.RejectLastFrame();
      if (++frames > 10000) return 0;
    }
  }
  // Whatever remains buffered is bounded by one frame plus one read.
  if (decoder.buffered() > hv::agent::kMaxResponsePayload + hv::agent::kFrameHeaderSize + step) {
    __builtin_trap();
  }
  return 0;
}
