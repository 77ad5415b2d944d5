// The guest kernel's BTF (CONFIG_DEBUG_INFO_BTF), read from __start_BTF..__stop_BTF in guest
// memory and parsed with libbpf. Structure offsets come from here, by name, so nothing depends
// on one kernel build's layout.
//
// The warm start (patcher/btf_answers.h): a command asks a few dozen questions, but reading and
// parsing the ~4 MiB blob costs a fresh process ~60 ms (~36 ms CPU, ~2,200 page faults). So a
// KernelBtf can record each question with its answer (Record), and a later process can answer
// from that record (FromAnswers) without reading the blob; only a question the record lacks
// reads and parses it then, and is recorded in turn. Replayed answers are exactly the parse's
// Results, errors included. A KernelBtf that neither records nor replays works as it always did.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "patcher/btf_answers.h"
#include "patcher/kernel_memory.h"

struct btf;

namespace hv::patcher {

class KernelBtf {
 public:
  // vmlinux BTF is a few MiB; anything larger is refused as corrupt.
  static constexpr std::uint64_t kMaxBlobBytes = 64ull << 20;

  // Parses a raw BTF blob. Errors: kInvalidArgument "malformed BTF: <libbpf's reason>".
  static Result<KernelBtf> Parse(std::span<const std::uint8_t> blob);
  // Reads [start, stop) from guest memory and parses it. Errors: kInvalidArgument for an empty,
  // inverted or oversized range; read errors with context; Parse's errors.
  static Result<KernelBtf> Read(const KernelMemory& mem, std::uint64_t start, std::uint64_t stop);

  // Reads and parses the real BTF (typically Read over a KernelMemory it builds) for a KernelBtf
  // made by FromAnswers. Called at most once, on the first question the answers lack, which may
  // come long after FromAnswers (a commit's questions, in the middle of `hvpatch apply`): so it
  // must not refer to anything that dies before the KernelBtf does (e.g. a page cache that only
  // lives for GuestKernel::Build).
  using Loader = std::function<Result<KernelBtf>()>;
  // A KernelBtf that answers from `answers` (DecodeBtfAnswers) and records further answers: a
  // question not in `answers` calls `load` and is answered (and recorded) from its parse. If
  // `load` fails, that question and every later unanswered one get its error with context
  // "reading BTF" (HasMember: false, type_count: 0) and nothing is recorded for them.
  static KernelBtf FromAnswers(BtfAnswers answers, Loader load);
  // From now on, records every question asked with its answer (Parse/Read's KernelBtf; one from
  // FromAnswers always records).
  void Record();
  bool recording() const { return book_ != nullptr; }
  // Whether the real BTF has been parsed: always after Parse/Read; after FromAnswers only once a
  // question the answers lacked was asked.
  bool parsed() const;

  // The answers recorded so far (FromAnswers' included; empty when not recording), and a
  // generation that counts the answers added since the KernelBtf was made.
  struct Recorded {
    BtfAnswers answers;
    std::uint64_t generation = 0;
  };
  Recorded recorded() const;
  // Whether answers were added after the generation last passed to MarkSaved (or, before any
  // MarkSaved, at all).
  bool HasUnsavedAnswers() const;
  void MarkSaved(std::uint64_t generation);

  // The questions. Thread-safe when recording (a mutex guards the record and the lazy parse).

  // Byte offset of `path` ("tasks", "thread.sp": dots descend into embedded structs; anonymous
  // struct/union members are searched through) inside struct or union `type`. Errors: kNotFound
  // naming the type or the member; kUnimplemented for a bitfield member.
  Result<std::uint64_t> Offset(std::string_view type, std::string_view path) const;
  // Size in bytes of the member at `path` of `type` (e.g. task_struct.comm is 16).
  Result<std::uint64_t> MemberSize(std::string_view type, std::string_view path) const;
  // Size in bytes of struct/union `type`. kNotFound if there is none.
  Result<std::uint64_t> TypeSize(std::string_view type) const;
  bool HasMember(std::string_view type, std::string_view path) const;

  using Member = BtfMember;
  // The named direct members of struct `type`, in order.
  Result<std::vector<Member>> Members(std::string_view type) const;

  std::size_t type_count() const;

  KernelBtf(KernelBtf&&) noexcept;
  KernelBtf& operator=(KernelBtf&&) noexcept;
  ~KernelBtf();

 private:
  KernelBtf();

  struct Found {
    std::uint64_t offset = 0;
    std::uint32_t type_id = 0;
  };
  Result<std::int32_t> FindComposite(std::string_view type) const;
  Result<Found> Resolve(std::string_view type, std::string_view path) const;
  // The answers of the parse.
  Result<std::uint64_t> ParsedOffset(std::string_view type, std::string_view path) const;
  Result<std::uint64_t> ParsedMemberSize(std::string_view type, std::string_view path) const;
  Result<std::uint64_t> ParsedTypeSize(std::string_view type) const;
  Result<std::vector<Member>> ParsedMembers(std::string_view type) const;
  // With a book: the recorded answer to `q`, else `parse`'s (after the lazy load), recorded.
  BtfAnswer Ask(BtfQuestion q, const std::function<BtfAnswer()>& parse) const;

  struct Free {
    void operator()(struct btf* b) const;
  };
  struct Book;
  // Null until the lazy load of a FromAnswers KernelBtf; set (under book_'s mutex) by it.
  mutable std::unique_ptr<struct btf, Free> btf_;
  std::unique_ptr<Book> book_;  // null: neither recording nor replaying
};

}  // namespace hv::patcher
