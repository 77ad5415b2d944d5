#include "guest-agent/error_code_map.h"

namespace hv::agent {

namespace pb = ::hvpatch::agent;

pb::ErrorCode ToWireCode(Code code) {
  switch (code) {
    case Code::kOk: return pb::ERROR_UNSPECIFIED;
    case Code::kInvalidArgument: return pb::ERROR_INVALID_ARGUMENT;
    case Code::kNotFound: return pb::ERROR_NOT_FOUND;
    case Code::kFailedPrecondition: return pb::ERROR_FAILED_PRECONDITION;
    case Code::kBusy: return pb::ERROR_BUSY;
    case Code::kUnavailable: return pb::ERROR_UNAVAILABLE;
    case Code::kDeadlineExceeded: return pb::ERROR_DEADLINE_EXCEEDED;
    case Code::kUnimplemented: return pb::ERROR_UNIMPLEMENTED;
    case Code::kInternal: return pb::ERROR_INTERNAL;
    case Code::kIo: return pb::ERROR_IO;
  }
  return pb::ERROR_INTERNAL;
}

Code FromWireCode(int wire_code) {
  switch (wire_code) {
    case pb::ERROR_INVALID_ARGUMENT: return Code::kInvalidArgument;
    case pb::ERROR_NOT_FOUND: return Code::kNotFound;
    case pb::ERROR_FAILED_PRECONDITION: return Code::kFailedPrecondition;
    case pb::ERROR_BUSY: return Code::kBusy;
    case pb::ERROR_UNAVAILABLE: return Code::kUnavailable;
    case pb::ERROR_DEADLINE_EXCEEDED: return Code::kDeadlineExceeded;
    case pb::ERROR_UNIMPLEMENTED: return Code::kUnimplemented;
    case pb::ERROR_IO: return Code::kIo;
    default: return Code::kInternal;
  }
}

}  // namespace hv::agent
