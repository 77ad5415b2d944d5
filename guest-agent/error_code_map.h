// hv::Code <-> the wire's ErrorCode (hvpatch_agent.proto), shared by the agent and the host client.
#pragma once

#include "base/status.h"
#include "guest-agent/hvpatch_agent.pb.h"

namespace hv::agent {

hvpatch::agent::ErrorCode ToWireCode(Code code);
// Unknown wire values (a newer or hostile agent) become kInternal.
Code FromWireCode(int wire_code);

}  // namespace hv::agent
