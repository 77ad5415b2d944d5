#include "patcher/task_walk.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "base/hex.h"
#include "patcher/address_set.h"

namespace hv::patcher {
namespace {

constexpr std::uint64_t kDefaultThreadSize = 16384;
constexpr std::uint64_t kMaxStackSize = 1ull << 20;

bool PowerOfTwo(std::uint64_t v) { return v && !(v & (v - 1)); }

Result<std::uint64_t> SymbolAddress(const SymbolTable& symbols, std::string_view name) {
  Result<KernelSymbol> s = symbols.Find("", name, 0);
  if (!s.ok()) return s.status().WithContext("locating tasks");
  return s->address;
}

std::optional<std::uint64_t> OptionalSymbol(const SymbolTable& symbols, std::string_view name) {
  Result<KernelSymbol> s = symbols.Find("", name, 0);
  if (!s.ok()) return std::nullopt;
  return s->address;
}

}  // namespace

Result<TaskLayout> TaskLayout::FromBtf(const KernelBtf& btf, const SymbolTable& symbols) {
  TaskLayout l;
  auto ctx = [](Status s) { return s.WithContext("task layout"); };
#define HV_LAYOUT_FIELD(dst, type, path)                 \
  do {                                                   \
    Result<std::uint64_t> r_ = btf.Offset(type, path);   \
    if (!r_.ok()) return ctx(r_.status());               \
    dst = *r_;                                           \
  } while (0)
  HV_LAYOUT_FIELD(l.tasks, "task_struct", "tasks");
  HV_LAYOUT_FIELD(l.pid, "task_struct", "pid");
  HV_LAYOUT_FIELD(l.tgid, "task_struct", "tgid");
  HV_LAYOUT_FIELD(l.comm, "task_struct", "comm");
  HV_LAYOUT_FIELD(l.stack, "task_struct", "stack");
  HV_LAYOUT_FIELD(l.thread_sp, "task_struct", "thread.sp");
  HV_LAYOUT_FIELD(l.on_cpu, "task_struct", "on_cpu");
  HV_LAYOUT_FIELD(l.signal, "task_struct", "signal");
  HV_LAYOUT_FIELD(l.rq_curr, "rq", "curr");
  HV_LAYOUT_FIELD(l.rq_idle, "rq", "idle");
  if (btf.HasMember("task_struct", "__state")) {
    HV_LAYOUT_FIELD(l.state, "task_struct", "__state");
    if (auto size = btf.MemberSize("task_struct", "__state"); size.ok()) l.state_size = *size;
  } else {
    HV_LAYOUT_FIELD(l.state, "task_struct", "state");  // before 5.14: long state
    l.state_size = 4;  // the low half holds every state bit on little-endian x86
  }
  if (auto size = btf.MemberSize("task_struct", "comm"); size.ok() && *size > 0 && *size <= 64) {
    l.comm_size = *size;
  }
  if (btf.HasMember("task_struct", "cpu")) l.cpu = *btf.Offset("task_struct", "cpu");
  if (btf.HasMember("signal_struct", "thread_head") && btf.HasMember("task_struct", "thread_node")) {
    HV_LAYOUT_FIELD(l.signal_thread_head, "signal_struct", "thread_head");
    HV_LAYOUT_FIELD(l.thread_node, "task_struct", "thread_node");
  } else {
    std::uint64_t tg = 0;
    HV_LAYOUT_FIELD(tg, "task_struct", "thread_group");
    l.thread_group = tg;
  }
  if (btf.HasMember("pcpu_hot", "current_task")) {
    l.pcpu_hot_current_task = *btf.Offset("pcpu_hot", "current_task");
  }
  if (btf.HasMember("pcpu_hot", "hardirq_stack_ptr")) {
    l.pcpu_hot_hardirq_stack_ptr = *btf.Offset("pcpu_hot", "hardirq_stack_ptr");
  }
#undef HV_LAYOUT_FIELD

  // THREAD_SIZE, in order of preference (see the header).
  l.thread_size = kDefaultThreadSize;
  l.thread_size_source = "default";
  if (auto s = btf.TypeSize("thread_union"); s.ok() && PowerOfTwo(*s) && *s <= kMaxStackSize) {
    l.thread_size = *s;
    l.thread_size_source = "BTF union thread_union";
  } else {
    auto start = OptionalSymbol(symbols, "__start_init_task");
    auto end = OptionalSymbol(symbols, "__end_init_task");
    if (start && end && *end > *start && PowerOfTwo(*end - *start) && *end - *start <= kMaxStackSize) {
      l.thread_size = *end - *start;
      l.thread_size_source = "kallsyms __end_init_task - __start_init_task";
    }
  }
  if (auto s = btf.TypeSize("irq_stack"); s.ok() && *s > 0 && *s <= kMaxStackSize) {
    l.irq_stack_size = *s;
  }
  if (auto members = btf.Members("cea_exception_stacks"); members.ok()) {
    for (const KernelBtf::Member& m : *members) {
      const std::string_view n = m.name;
      if (n.size() > 6 && n.substr(n.size() - 6) == "_stack" && m.size > 0 && m.size <= kMaxStackSize) {
        l.exception_stacks.push_back({m.name, m.offset, m.size});
      }
    }
  }
  return l;
}

Result<TaskAnchors> TaskAnchors::FromSymbols(const SymbolTable& symbols) {
  TaskAnchors a;
  HV_ASSIGN_OR_RETURN(a.init_task, SymbolAddress(symbols, "init_task"));
  HV_ASSIGN_OR_RETURN(a.per_cpu_offset, SymbolAddress(symbols, "__per_cpu_offset"));
  HV_ASSIGN_OR_RETURN(a.nr_cpu_ids, SymbolAddress(symbols, "nr_cpu_ids"));
  HV_ASSIGN_OR_RETURN(a.runqueues, SymbolAddress(symbols, "runqueues"));
  a.current_task = OptionalSymbol(symbols, "current_task");
  a.pcpu_hot = OptionalSymbol(symbols, "pcpu_hot");
  a.hardirq_stack_ptr = OptionalSymbol(symbols, "hardirq_stack_ptr");
  a.cea_exception_stacks = OptionalSymbol(symbols, "cea_exception_stacks");
  return a;
}

const GuestTask* TaskSnapshot::FindTask(std::uint64_t task_struct) const {
  for (const GuestTask& t : tasks) {
    if (t.task == task_struct) return &t;
  }
  return nullptr;
}

TaskWalker::TaskWalker(TaskLayout layout, TaskAnchors anchors)
    : layout_(std::move(layout)), anchors_(std::move(anchors)) {
  const TaskLayout& l = layout_;
  task_span_ = std::max({l.pid + 4, l.tgid + 4, l.comm + l.comm_size, l.state + 4, l.on_cpu + 4, l.stack + 8,
                         l.thread_sp + 8, l.signal + 8, l.tasks + 8,
                         (l.thread_group ? *l.thread_group : l.thread_node) + 8});
}

void TaskWalker::PrefetchTask(const KernelMemory& mem, std::uint64_t task) const {
  const TaskLayout& l = layout_;
  const std::uint8_t* p = mem.Direct(task, task_span_);
  if (p == nullptr) return;
  for (std::uint64_t off : {l.state, l.stack, l.on_cpu, l.pid, l.comm, l.thread_sp, l.signal,
                            l.thread_group ? *l.thread_group : l.thread_node}) {
    if (off < task_span_) __builtin_prefetch(p + off);
  }
}

void TaskWalker::PrefetchListNode(const KernelMemory& mem, std::uint64_t task) const {
  if (const std::uint8_t* p = mem.Direct(task + layout_.tasks, 8)) __builtin_prefetch(p);
}

Result<GuestTask> TaskWalker::ReadTask(const KernelMemory& mem, std::uint64_t task) const {
  const TaskLayout& l = layout_;
  GuestTask t;
  t.task = task;
  if (const std::uint8_t* p = mem.Direct(task, task_span_)) {
    // Guest RAM mapped here and the fields in one guest page: plain loads, the same fields
    // and widths as the reads below.
    auto load = [p](std::uint64_t off, auto v) {
      std::memcpy(&v, p + off, sizeof v);
      return v;
    };
    t.tid = load(l.pid, std::int32_t{});
    t.pid = load(l.tgid, std::int32_t{});
    const char* comm = reinterpret_cast<const char*>(p + l.comm);
    t.comm.assign(comm, strnlen(comm, l.comm_size));
    t.state = load(l.state, std::uint32_t{});
    t.on_cpu = load(l.on_cpu, std::uint32_t{}) != 0;
    t.stack_base = load(l.stack, std::uint64_t{});
    t.stack_size = l.thread_size;
    t.saved_sp = load(l.thread_sp, std::uint64_t{});
    t.signal = load(l.signal, std::uint64_t{});
    return t;
  }
  auto ctx = [&](const Status& s) { return s.WithContext("reading task_struct at " + Hex(task)); };
  Result<std::int32_t> tid = mem.ReadS32(task + l.pid);
  if (!tid.ok()) return ctx(tid.status());
  Result<std::int32_t> tgid = mem.ReadS32(task + l.tgid);
  if (!tgid.ok()) return ctx(tgid.status());
  Result<std::string> comm = mem.ReadCharArray(task + l.comm, l.comm_size);
  if (!comm.ok()) return ctx(comm.status());
  Result<std::uint32_t> state = mem.ReadU32(task + l.state);
  if (!state.ok()) return ctx(state.status());
  Result<std::uint32_t> on_cpu = mem.ReadU32(task + l.on_cpu);
  if (!on_cpu.ok()) return ctx(on_cpu.status());
  Result<std::uint64_t> stack = mem.ReadU64(task + l.stack);
  if (!stack.ok()) return ctx(stack.status());
  Result<std::uint64_t> sp = mem.ReadU64(task + l.thread_sp);
  if (!sp.ok()) return ctx(sp.status());
  t.tid = *tid;
  t.pid = *tgid;
  t.comm = std::move(*comm);
  t.state = *state;
  t.on_cpu = *on_cpu != 0;
  t.stack_base = *stack;
  t.stack_size = l.thread_size;
  t.saved_sp = *sp;
  return t;
}

Result<TaskSnapshot> TaskWalker::Walk(const KernelMemory& mem, const TaskSnapshot* hint) const {
  const TaskLayout& l = layout_;
  TaskSnapshot snap;
  AddressSet seen;  // task_struct addresses, across all lists
  seen.Reserve(1024);

  // Follows a circular list from `head` (a list_head address), calling `visit` with each
  // entry's list_head address. The head itself is not an entry.
  // `what` names the list in errors; it is only called on an error (thousands of lists are
  // walked inside the pause). Cycle check: the first kSmallList nodes in a local array (most
  // thread lists hold one or two tasks), a hash set only for longer lists.
  constexpr std::size_t kSmallList = 16;
  auto walk_list = [&](std::uint64_t head, auto&& what, auto&& visit) -> Status {
    std::array<std::uint64_t, kSmallList> small;
    std::size_t n_small = 0;
    AddressSet nodes;  // allocates only for a list longer than kSmallList
    std::uint64_t node = head;
    for (std::size_t steps = 0;; ++steps) {
      Result<std::uint64_t> next = mem.ReadU64(node);
      if (!next.ok()) return next.status().WithContext("walking " + what() + " at " + Hex(node));
      node = *next;
      if (node == head) return Status::Ok();
      if (steps >= kMaxTasks) {
        return InvalidArgument(what() + " has more than " + std::to_string(kMaxTasks) + " entries");
      }
      const bool again = std::find(small.begin(), small.begin() + static_cast<std::ptrdiff_t>(n_small), node) !=
                             small.begin() + static_cast<std::ptrdiff_t>(n_small) ||
                         nodes.Contains(node);
      if (again) return InvalidArgument("cycle in " + what() + " at " + Hex(node));
      if (n_small < kSmallList) {
        small[n_small++] = node;
      } else {
        nodes.Insert(node);
      }
      HV_RETURN_IF_ERROR(visit(node));
    }
  };

  auto add_task = [&](std::uint64_t task) -> Status {
    if (snap.tasks.size() >= kMaxTasks) {
      return InvalidArgument("more than " + std::to_string(kMaxTasks) + " tasks");
    }
    if (!seen.Insert(task)) return Status::Ok();  // e.g. a leader met again as a thread
    HV_ASSIGN_OR_RETURN(GuestTask t, ReadTask(mem, task));
    snap.tasks.push_back(std::move(t));
    return Status::Ok();
  };

  // Processes, then each one's threads. init_task (pid 0) is the head: it is CPU 0's idle task
  // and is added with the idle tasks below.
  std::vector<std::uint64_t> leaders;
  const bool prefetch = mem.phys().ReadsFromMapping() && mem.direct();  // hints only help a mapping
  // The hint's processes and all its tasks, in the order this walk meets them when nothing
  // changed (the idle tasks, met last, are left out). Step k of the process list then requests
  // the list node of the process expected at step k + kPrefetchAhead, and the k-th task added
  // requests the lines of the task expected kPrefetchAhead tasks on; when the lists changed in
  // between, those requests miss a few tasks, which are then read as without a hint.
  std::vector<std::uint64_t> expected_leaders;
  std::vector<const GuestTask*> expected_tasks;
  if (prefetch && hint != nullptr) {
    expected_leaders.reserve(hint->tasks.size());
    expected_tasks.reserve(hint->tasks.size());
    for (const GuestTask& t : hint->tasks) {
      if (t.idle) continue;
      expected_tasks.push_back(&t);
      if (t.tid == t.pid) expected_leaders.push_back(t.task);
    }
  }
  HV_RETURN_IF_ERROR(walk_list(anchors_.init_task + l.tasks, [] { return std::string("the process list"); },
                               [&](std::uint64_t node) -> Status {
                                 const std::size_t ahead = leaders.size() + kPrefetchAhead;
                                 leaders.push_back(node - l.tasks);
                                 if (ahead < expected_leaders.size()) PrefetchListNode(mem, expected_leaders[ahead]);
                                 // Without a hint: its other lines load while the chain goes on.
                                 if (prefetch && expected_tasks.empty()) PrefetchTask(mem, node - l.tasks);
                                 return Status::Ok();
                               }));
  // Each thread list starts in the leader's signal_struct: load a few leaders ahead (the
  // signal pointer itself was prefetched above), so those misses overlap.
  constexpr std::size_t kAhead = 8;
  auto prefetch_expected = [&] {
    const std::size_t ahead = snap.tasks.size() + kPrefetchAhead;
    if (ahead >= expected_tasks.size()) return;
    const GuestTask& t = *expected_tasks[ahead];
    PrefetchTask(mem, t.task);
    if (t.signal && !l.thread_group) {
      if (const std::uint8_t* p = mem.Direct(t.signal + l.signal_thread_head, 8)) __builtin_prefetch(p);
    }
  };
  for (std::size_t i = 0; i < leaders.size(); ++i) {
    const std::uint64_t leader = leaders[i];
    if (!expected_tasks.empty()) {
      prefetch_expected();
    } else if (prefetch && !l.thread_group && i + kAhead < leaders.size()) {
      if (Result<std::uint64_t> sig = mem.ReadU64(leaders[i + kAhead] + l.signal); sig.ok() && *sig) {
        if (const std::uint8_t* p = mem.Direct(*sig + l.signal_thread_head, 8)) __builtin_prefetch(p);
      }
    }
    HV_RETURN_IF_ERROR(add_task(leader));
    const auto what = [leader] { return "the thread list of task " + Hex(leader); };
    if (l.thread_group) {
      HV_RETURN_IF_ERROR(walk_list(leader + *l.thread_group, what, [&](std::uint64_t node) {
        if (!expected_tasks.empty()) prefetch_expected();
        return add_task(node - *l.thread_group);
      }));
      continue;
    }
    Result<std::uint64_t> signal = mem.ReadU64(leader + l.signal);
    if (!signal.ok()) return signal.status().WithContext("reading signal of task " + Hex(leader));
    if (*signal == 0) continue;  // a task being reaped has no signal_struct any more
    HV_RETURN_IF_ERROR(walk_list(*signal + l.signal_thread_head, what, [&](std::uint64_t node) {
      if (!expected_tasks.empty()) prefetch_expected();
      return add_task(node - l.thread_node);
    }));
  }

  // CPUs: idle task, current task and stacks of each.
  Result<std::uint32_t> nr_cpus = mem.ReadU32(anchors_.nr_cpu_ids);
  if (!nr_cpus.ok()) return nr_cpus.status().WithContext("reading nr_cpu_ids");
  if (*nr_cpus == 0 || *nr_cpus > kMaxCpus) {
    return InvalidArgument("nr_cpu_ids " + std::to_string(*nr_cpus) + " is not in 1.." +
                           std::to_string(kMaxCpus));
  }
  for (std::uint32_t cpu = 0; cpu < *nr_cpus; ++cpu) {
    CpuView v;
    v.cpu = static_cast<int>(cpu);
    const std::string ctx = "CPU " + std::to_string(cpu);
    Result<std::uint64_t> base = mem.ReadU64(anchors_.per_cpu_offset + 8ull * cpu);
    if (!base.ok()) return base.status().WithContext(ctx + ": reading __per_cpu_offset");
    v.per_cpu_base = *base;
    const std::uint64_t rq = *base + anchors_.runqueues;
    Result<std::uint64_t> idle = mem.ReadU64(rq + l.rq_idle);
    if (!idle.ok()) return idle.status().WithContext(ctx + ": reading rq->idle");
    v.idle_task = *idle;
    std::uint64_t current_at = rq + l.rq_curr;
    if (anchors_.current_task) {
      current_at = *base + *anchors_.current_task;
    } else if (anchors_.pcpu_hot && l.pcpu_hot_current_task) {
      current_at = *base + *anchors_.pcpu_hot + *l.pcpu_hot_current_task;
    }
    Result<std::uint64_t> current = mem.ReadU64(current_at);
    if (!current.ok()) return current.status().WithContext(ctx + ": reading the current task");
    v.current_task = *current;

    if (v.idle_task != 0) {
      if (seen.Insert(v.idle_task)) {
        HV_ASSIGN_OR_RETURN(GuestTask t, ReadTask(mem, v.idle_task));
        t.idle = true;
        t.idle_cpu = v.cpu;
        snap.tasks.push_back(std::move(t));
      } else {
        for (GuestTask& t : snap.tasks) {
          if (t.task == v.idle_task) {
            t.idle = true;
            t.idle_cpu = v.cpu;
          }
        }
      }
    }
    snap.cpus.push_back(std::move(v));
  }

  // Stack ranges of each CPU (after the tasks, so the current task's stack is known).
  for (CpuView& v : snap.cpus) {
    const std::string ctx = "CPU " + std::to_string(v.cpu);
    if (const GuestTask* t = snap.FindTask(v.current_task); t && t->stack_base) {
      v.stacks.push_back({"task", t->stack_base, t->stack_base + t->stack_size});
    } else if (v.current_task) {
      HV_ASSIGN_OR_RETURN(GuestTask t, ReadTask(mem, v.current_task));
      if (t.stack_base) v.stacks.push_back({"task", t.stack_base, t.stack_base + t.stack_size});
    }
    std::optional<std::uint64_t> hardirq_at;
    if (anchors_.hardirq_stack_ptr) {
      hardirq_at = v.per_cpu_base + *anchors_.hardirq_stack_ptr;
    } else if (anchors_.pcpu_hot && l.pcpu_hot_hardirq_stack_ptr) {
      hardirq_at = v.per_cpu_base + *anchors_.pcpu_hot + *l.pcpu_hot_hardirq_stack_ptr;
    }
    if (hardirq_at && l.irq_stack_size) {
      Result<std::uint64_t> top = mem.ReadU64(*hardirq_at);
      if (!top.ok()) return top.status().WithContext(ctx + ": reading hardirq_stack_ptr");
      if (*top) {  // hardirq_stack_ptr is the top word: the stack ends 8 bytes above it
        const std::uint64_t end = *top + 8;
        v.stacks.push_back({"irq", end - l.irq_stack_size, end});
      }
    }
    if (anchors_.cea_exception_stacks) {
      Result<std::uint64_t> cea = mem.ReadU64(v.per_cpu_base + *anchors_.cea_exception_stacks);
      if (!cea.ok()) return cea.status().WithContext(ctx + ": reading cea_exception_stacks");
      if (*cea) {
        for (const TaskLayout::Slot& s : l.exception_stacks) {
          v.stacks.push_back({"exception " + s.name, *cea + s.offset, *cea + s.offset + s.size});
        }
      }
    }
  }
  return snap;
}

int TaskWalker::CpuOfVcpu(const TaskSnapshot& snap, const vmm::VcpuState& vcpu) {
  const std::uint64_t gs = vcpu.in_kernel() ? vcpu.gs_base : vcpu.kernel_gs_base;
  for (const CpuView& v : snap.cpus) {
    if (v.per_cpu_base == gs) return v.cpu;
  }
  for (const CpuView& v : snap.cpus) {  // swapgs window: the other register holds it
    if (v.per_cpu_base == vcpu.gs_base || v.per_cpu_base == vcpu.kernel_gs_base) return v.cpu;
  }
  if (vcpu.index >= 0 && static_cast<std::size_t>(vcpu.index) < snap.cpus.size()) return vcpu.index;
  return -1;
}

}  // namespace hv::patcher
