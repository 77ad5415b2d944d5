// Every thread of the guest, and what each vCPU is running on, read from guest memory.
//
// Sources (Linux 6.1):
//   processes  init_task.tasks: a circular list of thread-group leaders (init_task, pid 0, is
//              the list head and CPU 0's idle task)
//   threads    each leader's signal->thread_head, linked through task_struct.thread_node
//              (kernels without signal_struct.thread_head: the circular task_struct.thread_group)
//   idle tasks per-cpu runqueues: struct rq .idle (pid 0; not on the tasks list except CPU 0's)
//   current    per-cpu current_task (6.1), or pcpu_hot.current_task (6.2+), else rq->curr
//   per-cpu    address = __per_cpu_offset[cpu] + the per-cpu symbol's kallsyms value
//              (x86-64 per-cpu symbols are offsets: CONFIG_KALLSYMS_ABSOLUTE_PERCPU)
//
// Stacks:
//   task       [task->stack, task->stack + THREAD_SIZE). THREAD_SIZE is the BTF size of
//              `union thread_union` when present, else __end_init_task - __start_init_task from
//              kallsyms (the linker script reserves exactly THREAD_SIZE for init's stack), else
//              16 KiB (x86-64 with KASAN off: PAGE_SIZE << (2 + KASAN_STACK_ORDER)).
//   saved SP   task->thread.sp, written by __switch_to_asm when the task last left a CPU
//   IRQ        per-cpu hardirq_stack_ptr (6.2+: pcpu_hot.hardirq_stack_ptr) points at the top
//              word of the IRQ stack; its size is the BTF size of struct irq_stack
//   exception  per-cpu cea_exception_stacks points at struct cea_exception_stacks in the
//              cpu_entry_area; every "*_stack" member (DF, NMI, DB, MCE, VC, VC2) with non-zero
//              size is an IST stack, its guard pages excluded.
//   Not covered: the entry trampoline stack (cpu_entry_area.entry_stack_page), where only the
//   entry code runs before it switches to the task stack, so it never holds a return address
//   into patchable code.
//
// Hostile memory: every list walk is bounded (kMaxTasks) and cycle-checked, every pointer is
// read through the page tables (an unmapped one is an error, not a crash), counts are bounded.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "patcher/kernel_btf.h"
#include "patcher/kernel_memory.h"
#include "patcher/symbol_table.h"
#include "vmm/vm.h"

namespace hv::patcher {

// Offsets and sizes the walk needs, all from BTF (sizes from kallsyms as a fallback).
struct TaskLayout {
  std::uint64_t tasks = 0, pid = 0, tgid = 0, comm = 0, comm_size = 16, stack = 0, thread_sp = 0;
  std::uint64_t state = 0, state_size = 4, on_cpu = 0;
  std::optional<std::uint64_t> cpu;  // task_struct.cpu (THREAD_INFO_IN_TASK)
  // Thread list: signal->thread_head + thread_node, or thread_group when absent.
  std::uint64_t signal = 0, thread_node = 0, signal_thread_head = 0;
  std::optional<std::uint64_t> thread_group;
  std::uint64_t rq_curr = 0, rq_idle = 0;
  std::optional<std::uint64_t> pcpu_hot_current_task, pcpu_hot_hardirq_stack_ptr;  // 6.2+
  std::uint64_t thread_size = 16384;
  std::string thread_size_source;  // "BTF union thread_union", "kallsyms", "default"
  std::uint64_t irq_stack_size = 0;
  struct Slot {
    std::string name;
    std::uint64_t offset = 0, size = 0;
  };
  std::vector<Slot> exception_stacks;  // within struct cea_exception_stacks

  // Errors: kNotFound naming the first missing type or member.
  static Result<TaskLayout> FromBtf(const KernelBtf& btf, const SymbolTable& symbols);
};

// Addresses of the kernel objects the walk starts from, from the symbol table.
struct TaskAnchors {
  std::uint64_t init_task = 0;
  std::uint64_t per_cpu_offset = 0;  // __per_cpu_offset[]
  std::uint64_t nr_cpu_ids = 0;
  std::uint64_t runqueues = 0;       // per-cpu offset
  std::optional<std::uint64_t> current_task, pcpu_hot, hardirq_stack_ptr, cea_exception_stacks;

  // Errors: kNotFound naming the first missing required symbol.
  static Result<TaskAnchors> FromSymbols(const SymbolTable& symbols);
};

struct GuestTask {
  std::uint64_t task = 0;  // task_struct address
  int pid = 0;             // thread-group id (what /proc calls the process)
  int tid = 0;             // task_struct.pid
  std::string comm;
  std::uint32_t state = 0;  // __state
  bool on_cpu = false;      // task_struct.on_cpu: running on some CPU now
  bool idle = false;        // a per-cpu idle task (pid 0)
  int idle_cpu = -1;        // for idle tasks: whose
  std::uint64_t stack_base = 0, stack_size = 0;
  std::uint64_t saved_sp = 0;  // thread.sp
  std::uint64_t signal = 0;    // signal_struct; only read where guest RAM is mapped (else 0)
};

struct StackRange {
  std::string kind;  // "task", "irq", "exception DF_stack", ...
  std::uint64_t begin = 0, end = 0;
};

struct CpuView {
  int cpu = 0;
  std::uint64_t per_cpu_base = 0;
  std::uint64_t current_task = 0;  // task_struct address
  std::uint64_t idle_task = 0;
  std::vector<StackRange> stacks;  // current task's stack, IRQ stack, exception stacks
};

struct TaskSnapshot {
  std::vector<GuestTask> tasks;  // processes' threads in list order, then the idle tasks
  std::vector<CpuView> cpus;
  const GuestTask* FindTask(std::uint64_t task_struct) const;
};

class TaskWalker {
 public:
  static constexpr std::size_t kMaxTasks = 1u << 18;
  static constexpr std::uint32_t kMaxCpus = 8192;  // NR_CPUS of the largest configs

  TaskWalker(TaskLayout layout, TaskAnchors anchors);

  // Walks all tasks and CPUs. Errors (kInvalidArgument unless a read fails): a cycle in a list
  // ("cycle in the thread list of pid N at ADDR"), more than kMaxTasks tasks, nr_cpu_ids of 0 or
  // over kMaxCpus, and read errors with the object being read as context.
  //
  // `hint`: an earlier walk of the same kernel (e.g. with the guest running, just before the
  // pause). Where guest RAM is mapped, the walk then requests the lines of the tasks it expects
  // kPrefetchAhead steps on while it follows the lists, so the cache and TLB misses of thousands
  // of scattered task_structs overlap instead of coming one per list step. Only a prefetch
  // address: everything is read and checked as without it, and a stale hint costs time only.
  Result<TaskSnapshot> Walk(const KernelMemory& mem, const TaskSnapshot* hint = nullptr) const;
  static constexpr std::size_t kPrefetchAhead = 16;

  // Which Linux CPU a vCPU is: the one whose per-cpu base equals its GS base (kernel mode) or
  // its KERNEL_GS_BASE (user mode, before swapgs); else the vCPU index. -1 if out of range.
  static int CpuOfVcpu(const TaskSnapshot& snap, const vmm::VcpuState& vcpu);

  const TaskLayout& layout() const { return layout_; }

 private:
  Result<GuestTask> ReadTask(const KernelMemory& mem, std::uint64_t task) const;
  // Prefetches the task_struct lines ReadTask and the list walk will read (a hint).
  void PrefetchTask(const KernelMemory& mem, std::uint64_t task) const;
  // Prefetches the line of `task`'s process-list node (a hint).
  void PrefetchListNode(const KernelMemory& mem, std::uint64_t task) const;

  TaskLayout layout_;
  TaskAnchors anchors_;
  // Bytes from a task_struct's start to the end of the last field the walk reads: with guest
  // RAM mapped, one KernelMemory::Direct of this many bytes serves all of them.
  std::uint64_t task_span_ = 0;
};

}  // namespace hv::patcher
