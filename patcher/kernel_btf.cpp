#include "patcher/kernel_btf.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>

#include "base/hex.h"

namespace hv::patcher {
namespace {

// Anonymous members nest a few levels at most in practice; the bound keeps a crafted BTF with
// self-referencing anonymous members from recursing forever.
constexpr int kMaxAnonymousDepth = 8;

bool IsComposite(const struct btf_type* t) { return t && (btf_is_struct(t) || btf_is_union(t)); }

struct MemberHit {
  std::uint64_t bit_offset = 0;
  std::uint32_t type_id = 0;
  std::uint32_t bitfield_size = 0;
};

// Searches `name` among the members of composite `t`, descending into anonymous members.
bool FindMember(const struct btf* b, const struct btf_type* t, std::string_view name, int depth,
                MemberHit* hit) {
  if (depth > kMaxAnonymousDepth) return false;
  const struct btf_member* m = btf_members(t);
  for (std::uint16_t i = 0; i < btf_vlen(t); ++i, ++m) {
    const char* mname = btf__name_by_offset(b, m->name_off);
    if (mname && *mname) {
      if (name == mname) {
        hit->bit_offset = btf_member_bit_offset(t, i);
        hit->type_id = m->type;
        hit->bitfield_size = btf_member_bitfield_size(t, i);
        return true;
      }
      continue;
    }
    const int inner_id = btf__resolve_type(b, m->type);
    if (inner_id < 0) continue;
    const struct btf_type* inner = btf__type_by_id(b, static_cast<std::uint32_t>(inner_id));
    if (!IsComposite(inner)) continue;
    MemberHit sub;
    if (FindMember(b, inner, name, depth + 1, &sub)) {
      *hit = sub;
      hit->bit_offset += btf_member_bit_offset(t, i);
      return true;
    }
  }
  return false;
}

BtfAnswer ToAnswer(const Status& s) {
  BtfAnswer a;
  a.code = s.code();
  a.message = s.message();
  a.hint = s.hint();
  return a;
}

BtfAnswer ToAnswer(const Result<std::uint64_t>& r) {
  if (!r.ok()) return ToAnswer(r.status());
  BtfAnswer a;
  a.value = *r;
  return a;
}

BtfAnswer ToAnswer(const Result<std::vector<BtfMember>>& r) {
  if (!r.ok()) return ToAnswer(r.status());
  BtfAnswer a;
  a.members = *r;
  return a;
}

Status ErrorOf(const BtfAnswer& a) { return Status(a.code, a.message, a.hint); }

Result<std::uint64_t> ValueOf(const BtfAnswer& a) {
  if (a.code != Code::kOk) return ErrorOf(a);
  return a.value;
}

}  // namespace

struct KernelBtf::Book {
  std::mutex mu;
  BtfAnswers answers;
  std::uint64_t generation = 0;
  std::uint64_t saved = 0;
  Loader load;                       // empty for a parsed KernelBtf
  std::optional<Status> load_error;  // set when `load` failed
};

KernelBtf::KernelBtf() = default;
KernelBtf::KernelBtf(KernelBtf&&) noexcept = default;
KernelBtf& KernelBtf::operator=(KernelBtf&&) noexcept = default;
KernelBtf::~KernelBtf() = default;

void KernelBtf::Free::operator()(struct btf* b) const { btf__free(b); }

KernelBtf KernelBtf::FromAnswers(BtfAnswers answers, Loader load) {
  KernelBtf out;
  out.book_ = std::make_unique<Book>();
  out.book_->answers = std::move(answers);
  out.book_->load = std::move(load);
  return out;
}

void KernelBtf::Record() {
  if (!book_) book_ = std::make_unique<Book>();
}

bool KernelBtf::parsed() const {
  if (!book_) return btf_ != nullptr;
  std::lock_guard<std::mutex> lock(book_->mu);
  return btf_ != nullptr;
}

KernelBtf::Recorded KernelBtf::recorded() const {
  if (!book_) return {};
  std::lock_guard<std::mutex> lock(book_->mu);
  return {book_->answers, book_->generation};
}

bool KernelBtf::HasUnsavedAnswers() const {
  if (!book_) return false;
  std::lock_guard<std::mutex> lock(book_->mu);
  return book_->generation > book_->saved;
}

void KernelBtf::MarkSaved(std::uint64_t generation) {
  if (!book_) return;
  std::lock_guard<std::mutex> lock(book_->mu);
  book_->saved = std::max(book_->saved, generation);
}

BtfAnswer KernelBtf::Ask(BtfQuestion q, const std::function<BtfAnswer()>& parse) const {
  std::lock_guard<std::mutex> lock(book_->mu);
  if (auto it = book_->answers.find(q); it != book_->answers.end()) return it->second;
  if (!btf_) {
    if (!book_->load_error) {
      Result<KernelBtf> loaded = book_->load ? book_->load() : Result<KernelBtf>(Internal("no BTF to parse"));
      if (loaded.ok() && loaded->btf_) {
        btf_ = std::move(loaded->btf_);
      } else {
        book_->load_error = loaded.ok() ? Internal("the BTF loader gave no BTF") : loaded.status();
      }
    }
    if (!btf_) return ToAnswer(book_->load_error->WithContext("reading BTF"));
  }
  BtfAnswer a = parse();
  if (FitsBtfAnswers(q, a) && book_->answers.size() < kMaxBtfAnswers) {
    book_->answers.emplace(std::move(q), a);
    ++book_->generation;
  }
  return a;
}

Result<KernelBtf> KernelBtf::Parse(std::span<const std::uint8_t> blob) {
  if (blob.size() > kMaxBlobBytes) {
    return InvalidArgument("BTF of " + std::to_string(blob.size()) + " bytes exceeds the limit of " +
                           std::to_string(kMaxBlobBytes));
  }
  // The type section must start 4-byte aligned, as the kernel's own BTF loader requires
  // (btf_parse_hdr: "Unsupported type_off alignment"): libbpf reads struct btf_type in place, so an
  // unaligned section from a hostile guest would be undefined behaviour (found by libFuzzer).
  if (blob.size() >= 24) {
    std::uint32_t hdr_len = 0, type_off = 0;
    std::memcpy(&hdr_len, blob.data() + 4, sizeof hdr_len);
    std::memcpy(&type_off, blob.data() + 8, sizeof type_off);
    if ((static_cast<std::uint64_t>(hdr_len) + type_off) % 4 != 0) {
      return InvalidArgument("malformed BTF: type section at offset " + std::to_string(hdr_len) + "+" +
                             std::to_string(type_off) + " is not 4-byte aligned");
    }
  }
  errno = 0;
  struct btf* b = btf__new(blob.data(), static_cast<std::uint32_t>(blob.size()));
  const long err = libbpf_get_error(b);
  if (!b || err) {
    const int e = err ? static_cast<int>(-err) : (errno ? errno : EINVAL);
    return InvalidArgument(std::string("malformed BTF: ") + std::strerror(e));
  }
  KernelBtf out;
  out.btf_.reset(b);
  return out;
}

Result<KernelBtf> KernelBtf::Read(const KernelMemory& mem, std::uint64_t start, std::uint64_t stop) {
  if (stop <= start || stop - start > kMaxBlobBytes) {
    return InvalidArgument("BTF range " + Hex(start) + ".." + Hex(stop) +
                           " is empty, inverted or over " + std::to_string(kMaxBlobBytes) +
                           " bytes");
  }
  std::vector<std::uint8_t> blob(static_cast<std::size_t>(stop - start));
  HV_RETURN_IF_ERROR(mem.Read(start, blob).WithContext("reading BTF"));
  return Parse(blob);
}

std::size_t KernelBtf::type_count() const {
  if (!book_) return btf__type_cnt(btf_.get());
  const BtfAnswer a = Ask({BtfQuestionKind::kTypeCount, "", ""}, [&] {
    BtfAnswer count;
    count.value = btf__type_cnt(btf_.get());
    return count;
  });
  return a.code == Code::kOk ? static_cast<std::size_t>(a.value) : 0;
}

Result<std::uint64_t> KernelBtf::Offset(std::string_view type, std::string_view path) const {
  if (!book_) return ParsedOffset(type, path);
  return ValueOf(Ask({BtfQuestionKind::kOffset, std::string(type), std::string(path)},
                     [&] { return ToAnswer(ParsedOffset(type, path)); }));
}

Result<std::uint64_t> KernelBtf::MemberSize(std::string_view type, std::string_view path) const {
  if (!book_) return ParsedMemberSize(type, path);
  return ValueOf(Ask({BtfQuestionKind::kMemberSize, std::string(type), std::string(path)},
                     [&] { return ToAnswer(ParsedMemberSize(type, path)); }));
}

Result<std::uint64_t> KernelBtf::TypeSize(std::string_view type) const {
  if (!book_) return ParsedTypeSize(type);
  return ValueOf(Ask({BtfQuestionKind::kTypeSize, std::string(type), ""},
                     [&] { return ToAnswer(ParsedTypeSize(type)); }));
}

// Offset's question: Resolve succeeds exactly when Offset does, so one recorded answer serves
// both (and a record cannot say a member exists whose offset it does not know).
bool KernelBtf::HasMember(std::string_view type, std::string_view path) const {
  if (!book_) return Resolve(type, path).ok();
  return Offset(type, path).ok();
}

Result<std::vector<KernelBtf::Member>> KernelBtf::Members(std::string_view type) const {
  if (!book_) return ParsedMembers(type);
  const BtfAnswer a = Ask({BtfQuestionKind::kMembers, std::string(type), ""},
                          [&] { return ToAnswer(ParsedMembers(type)); });
  if (a.code != Code::kOk) return ErrorOf(a);
  return a.members;
}

Result<std::int32_t> KernelBtf::FindComposite(std::string_view type) const {
  const std::string name(type);
  std::int32_t id = btf__find_by_name_kind(btf_.get(), name.c_str(), BTF_KIND_STRUCT);
  if (id <= 0) id = btf__find_by_name_kind(btf_.get(), name.c_str(), BTF_KIND_UNION);
  if (id <= 0) return NotFound("BTF has no struct or union '" + name + "'");
  return id;
}

Result<KernelBtf::Found> KernelBtf::Resolve(std::string_view type, std::string_view path) const {
  HV_ASSIGN_OR_RETURN(std::int32_t id, FindComposite(type));
  const struct btf* b = btf_.get();
  Found found;
  found.type_id = static_cast<std::uint32_t>(id);
  std::string_view rest = path;
  std::string walked(type);
  while (true) {
    const std::size_t dot = rest.find('.');
    const std::string_view part = rest.substr(0, dot);
    const int resolved = btf__resolve_type(b, found.type_id);
    const struct btf_type* t =
        resolved < 0 ? nullptr : btf__type_by_id(b, static_cast<std::uint32_t>(resolved));
    if (!IsComposite(t)) {
      return NotFound("BTF member '" + walked + "' is not a struct or union");
    }
    MemberHit hit;
    if (!FindMember(b, t, part, 0, &hit)) {
      return NotFound("BTF struct '" + walked + "' has no member '" + std::string(part) + "'");
    }
    walked += "." + std::string(part);
    if (hit.bitfield_size != 0 || hit.bit_offset % 8 != 0) {
      return Unimplemented("BTF member '" + walked + "' is a bitfield");
    }
    found.offset += hit.bit_offset / 8;
    found.type_id = hit.type_id;
    if (dot == std::string_view::npos) return found;
    rest = rest.substr(dot + 1);
  }
}

Result<std::uint64_t> KernelBtf::ParsedOffset(std::string_view type, std::string_view path) const {
  HV_ASSIGN_OR_RETURN(Found f, Resolve(type, path));
  return f.offset;
}

Result<std::uint64_t> KernelBtf::ParsedMemberSize(std::string_view type, std::string_view path) const {
  HV_ASSIGN_OR_RETURN(Found f, Resolve(type, path));
  const long long size = btf__resolve_size(btf_.get(), f.type_id);
  if (size < 0) {
    return InvalidArgument("BTF member '" + std::string(type) + "." + std::string(path) +
                           "' has no size");
  }
  return static_cast<std::uint64_t>(size);
}

Result<std::uint64_t> KernelBtf::ParsedTypeSize(std::string_view type) const {
  HV_ASSIGN_OR_RETURN(std::int32_t id, FindComposite(type));
  const long long size = btf__resolve_size(btf_.get(), static_cast<std::uint32_t>(id));
  if (size < 0) return InvalidArgument("BTF type '" + std::string(type) + "' has no size");
  return static_cast<std::uint64_t>(size);
}

Result<std::vector<KernelBtf::Member>> KernelBtf::ParsedMembers(std::string_view type) const {
  HV_ASSIGN_OR_RETURN(std::int32_t id, FindComposite(type));
  const struct btf* b = btf_.get();
  const struct btf_type* t = btf__type_by_id(b, static_cast<std::uint32_t>(id));
  std::vector<Member> out;
  const struct btf_member* m = btf_members(t);
  for (std::uint16_t i = 0; i < btf_vlen(t); ++i, ++m) {
    const char* name = btf__name_by_offset(b, m->name_off);
    if (!name || !*name) continue;
    const long long size = btf__resolve_size(b, m->type);
    out.push_back(Member{name, btf_member_bit_offset(t, i) / 8,
                         size < 0 ? 0 : static_cast<std::uint64_t>(size)});
  }
  return out;
}

}  // namespace hv::patcher
