#include "patcher/btf_answers.h"

#include <cstring>

#include "base/hex.h"

namespace hv::patcher {
namespace {

constexpr char kMagic[8] = {'H', 'V', 'B', 'T', 'F', 'A', 'N', '1'};
constexpr std::size_t kMaxBuildId = 128;

std::uint64_t Checksum(std::string_view b) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : b) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

void Put(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutString(std::string& out, std::string_view s) {
  Put(out, s.size(), 2);
  out += s;
}

// A bounds-checked little-endian reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool Get(int bytes, std::uint64_t* v) {
    if (b_.size() - pos_ < static_cast<std::size_t>(bytes)) return false;
    *v = 0;
    for (int i = 0; i < bytes; ++i) *v |= std::uint64_t{static_cast<unsigned char>(b_[pos_ + i])} << (8 * i);
    pos_ += static_cast<std::size_t>(bytes);
    return true;
  }
  // A 2-byte length, at most `max`, then that many bytes.
  bool GetString(std::size_t max, std::string* s) {
    std::uint64_t n = 0;
    if (!Get(2, &n) || n > max || b_.size() - pos_ < n) return false;
    s->assign(b_.substr(pos_, n));
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  std::string_view b_;
  std::size_t pos_ = 0;
};

bool KnownKind(std::uint64_t k) {
  return k >= static_cast<std::uint64_t>(BtfQuestionKind::kOffset) &&
         k <= static_cast<std::uint64_t>(BtfQuestionKind::kTypeCount);
}

}  // namespace

std::string BtfAnswersKey::StoreKey() const {
  if (build_id.empty() || build_id.size() > kMaxBuildId) return "";
  for (char c : build_id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return "";
  }
  return "btf-" + build_id + "-" + Hex(btf_bytes).substr(2);
}

bool FitsBtfAnswers(const BtfQuestion& question, const BtfAnswer& answer) {
  if (question.type.size() > kMaxBtfNameLength || question.path.size() > kMaxBtfNameLength) return false;
  if (answer.message.size() > kMaxBtfMessageLength || answer.hint.size() > kMaxBtfMessageLength) return false;
  if (answer.members.size() > kMaxBtfMembers) return false;
  for (const BtfMember& m : answer.members) {
    if (m.name.empty() || m.name.size() > kMaxBtfNameLength) return false;
  }
  return true;
}

std::string EncodeBtfAnswers(const BtfAnswersKey& key, const BtfAnswers& answers) {
  std::string out(kMagic, sizeof(kMagic));
  PutString(out, key.build_id);
  Put(out, key.btf_bytes, 8);
  Put(out, answers.size(), 4);
  for (const auto& [q, a] : answers) {
    Put(out, static_cast<std::uint8_t>(q.kind), 1);
    PutString(out, q.type);
    PutString(out, q.path);
    Put(out, static_cast<std::uint64_t>(a.code), 1);
    if (a.code != Code::kOk) {
      PutString(out, a.message);
      PutString(out, a.hint);
    } else if (q.kind == BtfQuestionKind::kMembers) {
      Put(out, a.members.size(), 4);
      for (const BtfMember& m : a.members) {
        PutString(out, m.name);
        Put(out, m.offset, 8);
        Put(out, m.size, 8);
      }
    } else {
      Put(out, a.value, 8);
    }
  }
  Put(out, Checksum(out), 8);
  return out;
}

Result<BtfAnswers> DecodeBtfAnswers(std::string_view bytes, const BtfAnswersKey& expected) {
  auto bad = [](const std::string& what) { return InvalidArgument("BTF answers entry: " + what); };
  if (bytes.size() > kMaxBtfAnswersBytes) {
    return bad(std::to_string(bytes.size()) + " bytes exceed the limit of " + std::to_string(kMaxBtfAnswersBytes));
  }
  if (bytes.size() < sizeof(kMagic) + 8 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return bad("no HVBTFAN1 magic");
  }
  const std::string_view body = bytes.substr(0, bytes.size() - 8);
  Reader tail(bytes.substr(bytes.size() - 8));
  std::uint64_t sum = 0;
  tail.Get(8, &sum);
  if (sum != Checksum(body)) return bad("checksum mismatch (corrupt or truncated)");

  Reader r(body.substr(sizeof(kMagic)));
  std::string build_id;
  std::uint64_t btf_bytes = 0, count = 0;
  if (!r.GetString(kMaxBuildId, &build_id) || !r.Get(8, &btf_bytes) || !r.Get(4, &count)) {
    return bad("truncated header");
  }
  if (build_id != expected.build_id) {
    return FailedPrecondition("BTF answers entry is for build-id '" + build_id + "', not '" + expected.build_id + "'");
  }
  if (btf_bytes != expected.btf_bytes) {
    return FailedPrecondition("BTF answers entry is for a BTF of " + std::to_string(btf_bytes) + " bytes, not " +
                              std::to_string(expected.btf_bytes));
  }
  if (count > kMaxBtfAnswers) return bad(std::to_string(count) + " answers exceed the limit");
  BtfAnswers out;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::string where = "answer " + std::to_string(i);
    std::uint64_t kind = 0, code = 0;
    BtfQuestion q;
    BtfAnswer a;
    if (!r.Get(1, &kind) || !r.GetString(kMaxBtfNameLength, &q.type) || !r.GetString(kMaxBtfNameLength, &q.path) ||
        !r.Get(1, &code)) {
      return bad(where + " is truncated or has a bad length");
    }
    if (!KnownKind(kind)) return bad(where + " has unknown question kind " + std::to_string(kind));
    if (code > static_cast<std::uint64_t>(Code::kIo)) return bad(where + " has unknown error code " + std::to_string(code));
    q.kind = static_cast<BtfQuestionKind>(kind);
    a.code = static_cast<Code>(code);
    if (a.code != Code::kOk) {
      if (!r.GetString(kMaxBtfMessageLength, &a.message) || !r.GetString(kMaxBtfMessageLength, &a.hint)) {
        return bad(where + " is truncated or has a bad message length");
      }
    } else if (q.kind == BtfQuestionKind::kMembers) {
      std::uint64_t n = 0;
      if (!r.Get(4, &n) || n > kMaxBtfMembers) return bad(where + " is truncated or has too many members");
      for (std::uint64_t m = 0; m < n; ++m) {
        BtfMember member;
        if (!r.GetString(kMaxBtfNameLength, &member.name) || member.name.empty() || !r.Get(8, &member.offset) ||
            !r.Get(8, &member.size)) {
          return bad(where + " member " + std::to_string(m) + " is truncated or has a bad name length");
        }
        a.members.push_back(std::move(member));
      }
    } else if (!r.Get(8, &a.value)) {
      return bad(where + " is truncated");
    }
    if (!out.emplace(std::move(q), std::move(a)).second) return bad(where + " repeats a question");
  }
  if (!r.done()) return bad("trailing bytes after " + std::to_string(count) + " answers");
  return out;
}

}  // namespace hv::patcher
