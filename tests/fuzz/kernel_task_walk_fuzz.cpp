// The task walk, module list and stack regions over a fake guest whose heap (task structs,
// lists, stacks, per-cpu areas, run queues, the module) the input corrupts. Input: records of
// 10 bytes, a little-endian u16 word index into the used heap and the u64 to store there. A
// value below the heap's size becomes a pointer into the heap at that offset, so list links can
// point back at any task or list head: cyclic task, thread and module lists, a task whose
// stack is another task, per-cpu pointers into the middle of a task.
// Everything is restored after each input, so the fake guest is built once.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "patcher/guest_kernel.h"
#include "tests/unit/patcher/fake_guest_kernel.h"

namespace {

struct World {
  hv::testing::FakeGuestKernel guest;
  std::unique_ptr<hv::patcher::GuestKernel> kernel;
  std::vector<std::uint8_t> heap;
  World() {
    const auto vcpus = guest.vcpus();
    auto k = hv::patcher::GuestKernel::Build(guest.mem(), vcpus);
    if (!k.ok()) std::abort();
    kernel = std::move(*k);
    heap.resize(guest.heap_used());
    if (!guest.mem().ReadPhys(hv::testing::FakeGuestKernel::kHeapPa, heap).ok()) std::abort();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World* w = new World();
  const std::uint64_t words = w->heap.size() / 8;
  for (std::size_t at = 0; at + 10 <= size; at += 10) {
    std::uint16_t index;
    std::uint64_t value;
    std::memcpy(&index, data + at, 2);
    std::memcpy(&value, data + at + 2, 8);
    if (value < w->heap.size()) value += hv::testing::FakeGuestKernel::kHeapVa;
    w->guest.Write64(hv::testing::FakeGuestKernel::kHeapVa + 8 * (index % words), value);
  }
  const auto vcpus = w->guest.vcpus();
  // Read through ReadPhys and through direct loads (a mapping of guest RAM): the same verdict
  // and the same tasks, whatever the input did to the lists.
  w->guest.mem().set_direct(false);
  auto copied = w->kernel->WalkTasks(w->guest.mem());
  w->guest.mem().set_direct(true);
  auto loaded = w->kernel->WalkTasks(w->guest.mem());
  if (copied.ok() != loaded.ok()) std::abort();
  if (copied.ok()) {
    if (copied->tasks.size() != loaded->tasks.size()) std::abort();
    for (std::size_t i = 0; i < copied->tasks.size(); ++i) {
      const auto& a = copied->tasks[i];
      const auto& b = loaded->tasks[i];
      if (a.task != b.task || a.tid != b.tid || a.pid != b.pid || a.comm != b.comm || a.saved_sp != b.saved_sp ||
          a.stack_base != b.stack_base || a.state != b.state || a.on_cpu != b.on_cpu) {
        std::abort();
      }
    }
  }
  (void)w->kernel->StackRegions(w->guest.mem(), vcpus);
  // The module list too: a fresh build walks it (and everything else) again.
  (void)hv::patcher::GuestKernel::Build(w->guest.mem(), vcpus);
  w->guest.mem().set_direct(false);
  w->guest.mem().Write(hv::testing::FakeGuestKernel::kHeapPa, w->heap);
  return 0;
}
