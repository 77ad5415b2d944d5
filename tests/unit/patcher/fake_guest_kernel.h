// A small but complete fake Linux guest in vector-backed memory, for the guest kernel model's
// unit tests: real 4-level page tables, a kernel image at a KASLR-shifted address with
// phys_base != 0, a vmcoreinfo page, kallsyms tables built by the same compression scheme as
// scripts/kallsyms (tokens + base-relative offsets with absolute per-cpu values), a BTF blob
// written with libbpf's BTF writer, a task list with a multi-threaded process, two CPUs with
// per-cpu areas, run queues, IRQ and exception stacks, and one loaded module.
//
// Tests break it on purpose through the Write helpers (cycles, absurd counts, garbage BTF).
#pragma once

#include <bpf/btf.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "patcher/vmcoreinfo.h"
#include "tests/unit/fake_phys_memory.h"
#include "vmm/vm.h"

namespace hv::testing {

class FakeGuestKernel {
 public:
  static constexpr std::uint64_t kRamSize = 64ull << 20;
  static constexpr std::uint64_t kKaslr = 0x1a200000;
  static constexpr std::uint64_t kImageVa = 0xffffffff81000000ull + kKaslr;
  static constexpr std::uint64_t kImagePa = 0x1000000;  // 16 MiB
  static constexpr std::uint64_t kImageSize = 8ull << 20;
  static constexpr std::uint64_t kHeapVa = 0xffffc90000000000ull;  // "vmalloc"
  static constexpr std::uint64_t kHeapPa = 0x2000000;               // 32 MiB
  static constexpr std::uint64_t kHeapSize = 16ull << 20;
  static constexpr std::uint64_t kVmcoreinfoPa = 0x300000;
  static constexpr std::uint64_t kThreadSize = 16384;
  static constexpr const char* kRelease = "6.1.0-fake-amd64";
  static constexpr const char* kBuildId = "3b43fad5034874490492495d552c0af6a5fab235";

  // task_struct layout (BTF describes exactly this).
  static constexpr std::uint64_t kTaskState = 0, kTaskStack = 8, kTaskOnCpu = 16, kTaskCpu = 20,
                                 kTaskTasks = 32, kTaskIds = 48 /* anonymous {pid, tgid} */,
                                 kTaskThreadNode = 64, kTaskSignal = 80, kTaskComm = 96,
                                 kTaskThread = 128, kThreadSp = 8, kTaskSize = 512;
  static constexpr std::uint64_t kSignalThreadHead = 16, kSignalSize = 64;
  static constexpr std::uint64_t kRqCurr = 16, kRqIdle = 24, kRqSize = 256;
  static constexpr std::uint64_t kModState = 0, kModList = 8, kModName = 24, kModSyms = 80,
                                 kModNumSyms = 88, kModKallsyms = 96, kModCoreLayout = 128,
                                 kModSize = 256;
  // Per-cpu offsets (kallsyms values of per-cpu symbols).
  static constexpr std::uint64_t kPcpuCurrentTask = 0x1000, kPcpuHardirq = 0x1008,
                                 kPcpuCea = 0x1010, kPcpuRunqueues = 0x2000, kPcpuEnd = 0x4000;

  struct Task {
    std::uint64_t va = 0;
    int pid = 0, tgid = 0;
    std::string comm;
  };

  // `pcpu_hot`: the 6.2+ per-cpu layout, where current_task and hardirq_stack_ptr are members
  // of struct pcpu_hot (same offsets here) instead of per-cpu symbols of their own.
  explicit FakeGuestKernel(bool pcpu_hot = false) : mem_(kRamSize), pcpu_hot_(pcpu_hot) { Build(); }

  FakePhysMemory& mem() { return mem_; }
  const FakePhysMemory& mem() const { return mem_; }
  std::vector<vmm::VcpuState> vcpus() const { return vcpus_; }

  // Addresses of interesting objects, for tests that corrupt them.
  std::uint64_t Symbol(const std::string& name) const { return symbols_.at(name); }
  const std::vector<Task>& tasks() const { return tasks_; }
  std::uint64_t idle1() const { return idle1_; }
  std::uint64_t module_va() const { return module_; }
  std::uint64_t btf_pa() const { return Pa(Symbol("__start_BTF")); }
  std::uint64_t btf_size() const { return Symbol("__stop_BTF") - Symbol("__start_BTF"); }
  std::uint64_t per_cpu_base(int cpu) const { return percpu_[cpu]; }
  std::uint64_t kallsyms_names_va() const { return Symbol("kallsyms_names"); }
  // Bytes of the heap in use (tasks, stacks, per-cpu areas, the module), from kHeapVa.
  std::uint64_t heap_used() const { return heap_next_ - kHeapVa; }

  std::uint64_t Pa(std::uint64_t va) const {
    if (va >= kImageVa && va < kImageVa + kImageSize) return kImagePa + (va - kImageVa);
    if (va >= kHeapVa && va < kHeapVa + kHeapSize) return kHeapPa + (va - kHeapVa);
    std::abort();
  }
  void Write(std::uint64_t va, const void* data, std::size_t n) {
    mem_.Write(Pa(va), std::span(static_cast<const std::uint8_t*>(data), n));
  }
  void Write64(std::uint64_t va, std::uint64_t v) { Write(va, &v, 8); }
  void Write32(std::uint64_t va, std::uint32_t v) { Write(va, &v, 4); }
  void WriteStr(std::uint64_t va, const std::string& s) { Write(va, s.c_str(), s.size() + 1); }

 private:
  std::uint64_t ImageAlloc(std::uint64_t size, std::uint64_t align = 8) {
    image_next_ = (image_next_ + align - 1) & ~(align - 1);
    const std::uint64_t va = image_next_;
    image_next_ += size;
    return va;
  }
  std::uint64_t HeapAlloc(std::uint64_t size, std::uint64_t align = 64) {
    heap_next_ = (heap_next_ + align - 1) & ~(align - 1);
    const std::uint64_t va = heap_next_;
    heap_next_ += size;
    return va;
  }

  void MapAll() {
    // init_top_pgt lives in the image, as in Linux: the last page of the image.
    root_va_ = kImageVa + kImageSize - 4096;
    const std::uint64_t root = Pa(root_va_);
    for (std::uint64_t off = 0; off < kImageSize; off += 2ull << 20) {
      mem_.Map(root, false, kImageVa + off, kImagePa + off, 2ull << 20, 0x3);
    }
    for (std::uint64_t off = 0; off < kHeapSize; off += 4096) {
      mem_.Map(root, false, kHeapVa + off, kHeapPa + off, 4096, 0x3);
    }
  }

  std::uint64_t NewTask(int pid, int tgid, const std::string& comm, bool in_image = false) {
    const std::uint64_t t = in_image ? ImageAlloc(kTaskSize, 64) : HeapAlloc(kTaskSize);
    const std::uint64_t stack = HeapAlloc(kThreadSize, kThreadSize);
    Write32(t + kTaskState, pid == 0 ? 0 : 1);
    Write64(t + kTaskStack, stack);
    Write32(t + kTaskIds, static_cast<std::uint32_t>(pid));
    Write32(t + kTaskIds + 4, static_cast<std::uint32_t>(tgid));
    char c[16] = {};
    std::memcpy(c, comm.data(), std::min<std::size_t>(comm.size(), 15));
    Write(t + kTaskComm, c, 16);
    Write64(t + kTaskThread + kThreadSp, stack + kThreadSize - 0x100);
    if (pid != 0) tasks_.push_back({t, pid, tgid, comm});
    return t;
  }

  // Links list_head `node` at the tail of the circular list headed by `head`.
  void ListAdd(std::uint64_t head, std::uint64_t node) {
    std::uint64_t prev = mem_.Read64(Pa(head) + 8);
    if (prev == 0) prev = head;  // an uninitialised head
    Write64(node, head);
    Write64(node + 8, prev);
    Write64(prev, node);
    Write64(head + 8, node);
  }
  void ListInit(std::uint64_t head) {
    Write64(head, head);
    Write64(head + 8, head);
  }

  void Build() {
    image_next_ = kImageVa;
    heap_next_ = kHeapVa;
    MapAll();

    // The image: symbols that the model looks up, in address order.
    std::map<std::string, std::uint64_t>& s = symbols_;
    s["_stext"] = ImageAlloc(0x1000, 0x1000);
    s["dup_func"] = ImageAlloc(0x40, 16);  // two static functions of the same name
    s["dup_func#2"] = ImageAlloc(0x40, 16);
    s["cmdline_proc_show"] = ImageAlloc(0x80, 16);
    s["_etext"] = ImageAlloc(0x10, 16);
    s["init_uts_ns"] = ImageAlloc(6 * 65 + 8);
    s["init_task"] = ImageAlloc(kTaskSize, 64);
    s["__per_cpu_offset"] = ImageAlloc(8 * 2);
    s["nr_cpu_ids"] = ImageAlloc(4);
    s["modules"] = ImageAlloc(16);
    s["__start_init_task"] = ImageAlloc(0, 16384);
    ImageAlloc(16384);
    s["__end_init_task"] = image_next_;

    // init_task is pid 0, CPU 0's idle task, and the head of the process list.
    {
      const std::uint64_t t = s["init_task"];
      Write32(t + kTaskIds, 0);
      Write32(t + kTaskIds + 4, 0);
      char c[16] = "swapper/0";
      Write(t + kTaskComm, c, 16);
      Write64(t + kTaskStack, s["__start_init_task"]);
      Write64(t + kTaskThread + kThreadSp, s["__start_init_task"] + kThreadSize - 0x200);
      ListInit(t + kTaskTasks);
    }
    WriteStr(s["init_uts_ns"] + 2 * 65, kRelease);

    // Processes: init, kthreadd, and "threads" (3 threads).
    auto add_process = [&](int pid, const std::string& comm, int nthreads) {
      const std::uint64_t leader = NewTask(pid, pid, comm);
      ListAdd(s["init_task"] + kTaskTasks, leader + kTaskTasks);
      const std::uint64_t sig = HeapAlloc(kSignalSize);
      ListInit(sig + kSignalThreadHead);
      Write64(leader + kTaskSignal, sig);
      ListAdd(sig + kSignalThreadHead, leader + kTaskThreadNode);
      for (int i = 1; i < nthreads; ++i) {
        const std::uint64_t t = NewTask(pid + i, pid, "worker-" + std::to_string(i));
        Write64(t + kTaskSignal, sig);
        ListAdd(sig + kSignalThreadHead, t + kTaskThreadNode);
      }
      return leader;
    };
    const std::uint64_t init = add_process(1, "init", 1);
    add_process(2, "kthreadd", 1);
    add_process(100, "threads", 3);

    // CPUs: per-cpu areas, run queues, idle and current tasks, IRQ and exception stacks.
    idle1_ = NewTask(0, 0, "swapper/1");
    const std::uint64_t currents[2] = {s["init_task"], init};
    const std::uint64_t idles[2] = {s["init_task"], idle1_};
    Write32(s["nr_cpu_ids"], 2);
    for (int cpu = 0; cpu < 2; ++cpu) {
      const std::uint64_t base = HeapAlloc(kPcpuEnd, 4096);
      percpu_[cpu] = base;
      Write64(s["__per_cpu_offset"] + 8 * cpu, base);
      Write64(base + kPcpuCurrentTask, currents[cpu]);
      Write64(base + kPcpuRunqueues + kRqCurr, currents[cpu]);
      Write64(base + kPcpuRunqueues + kRqIdle, idles[cpu]);
      const std::uint64_t irq = HeapAlloc(kThreadSize, kThreadSize);
      Write64(base + kPcpuHardirq, irq + kThreadSize - 8);
      const std::uint64_t cea = HeapAlloc(4 * 4096, 4096);
      Write64(base + kPcpuCea, cea);
      vmm::VcpuState v;
      v.index = cpu;
      v.cs = 0x10;
      v.gs_base = base;
      v.cr3 = Pa(root_va_);
      v.cr0 = 0x80050033;  // PG, WP, NE, ET, MP, PE: what Linux runs with
      v.efer = 0xd01;      // NXE, LMA, LME, SCE
      v.rsp = cpu == 0 ? s["__start_init_task"] + kThreadSize - 0x300 : 0x7ffc0000;
      if (cpu == 1) v.cs = 0x33;  // CPU 1 runs init in user mode
      if (cpu == 1) v.kernel_gs_base = base, v.gs_base = 0;
      vcpus_.push_back(v);
    }
    Write32(init + kTaskOnCpu, 1);
    Write32(s["init_task"] + kTaskOnCpu, 1);

    BuildModule();
    BuildBtf();
    BuildKallsyms();
    BuildVmcoreinfo();
  }

  void BuildModule() {
    module_ = HeapAlloc(kModSize);
    ListInit(symbols_["modules"]);
    ListAdd(symbols_["modules"], module_ + kModList);
    WriteStr(module_ + kModName, "fakemod");
    const std::uint64_t text = HeapAlloc(0x1000, 4096);
    Write64(module_ + kModCoreLayout, text);
    Write32(module_ + kModCoreLayout + 8, 0x1000);
    // symtab: null, fake_fn (exported), fake_helper, dup x2, an undefined symbol.
    struct Sym {
      const char* name;
      std::uint16_t shndx;
      std::uint64_t value;
      char type;
    };
    const Sym syms[] = {{"", 0, 0, 0},           {"fake_fn", 1, text + 0x10, 't'},
                        {"fake_helper", 1, text + 0x80, 't'}, {"dup", 1, text + 0x100, 't'},
                        {"dup", 1, text + 0x200, 't'},        {"printk", 0, 0, 'U'}};
    const int n = sizeof(syms) / sizeof(syms[0]);
    std::string strtab(1, '\0');
    std::vector<std::uint8_t> symtab(24 * n), typetab(n);
    for (int i = 0; i < n; ++i) {
      std::uint32_t name_off = 0;
      if (*syms[i].name) {
        name_off = static_cast<std::uint32_t>(strtab.size());
        strtab += syms[i].name;
        strtab += '\0';
      }
      std::memcpy(&symtab[24 * i], &name_off, 4);
      std::memcpy(&symtab[24 * i + 6], &syms[i].shndx, 2);
      std::memcpy(&symtab[24 * i + 8], &syms[i].value, 8);
      typetab[i] = static_cast<std::uint8_t>(syms[i].type);
    }
    const std::uint64_t symtab_va = HeapAlloc(symtab.size());
    Write(symtab_va, symtab.data(), symtab.size());
    const std::uint64_t strtab_va = HeapAlloc(strtab.size());
    Write(strtab_va, strtab.data(), strtab.size());
    const std::uint64_t typetab_va = HeapAlloc(typetab.size());
    Write(typetab_va, typetab.data(), typetab.size());
    const std::uint64_t ks = HeapAlloc(32);
    Write64(ks + 0, symtab_va);
    Write32(ks + 8, n);
    Write64(ks + 16, strtab_va);
    Write64(ks + 24, typetab_va);
    Write64(module_ + kModKallsyms, ks);
    // Export table: fake_fn, place-relative (PREL32).
    const std::uint64_t ksym = HeapAlloc(12);
    const std::uint64_t name_va = strtab_va + 1;  // "fake_fn"
    Write32(ksym + 0, static_cast<std::uint32_t>(static_cast<std::int64_t>(text + 0x10 - ksym)));
    Write32(ksym + 4, static_cast<std::uint32_t>(static_cast<std::int64_t>(name_va - (ksym + 4))));
    Write32(ksym + 8, 0);
    Write64(module_ + kModSyms, ksym);
    Write32(module_ + kModNumSyms, 1);
  }

  void BuildBtf() {
    struct btf* b = btf__new_empty();
    const int u32 = btf__add_int(b, "unsigned int", 4, 0);
    const int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
    const int u64 = btf__add_int(b, "long unsigned int", 8, 0);
    const int chr = btf__add_int(b, "char", 1, BTF_INT_SIGNED);
    const int voidp = btf__add_ptr(b, 0);
    const int comm = btf__add_array(b, u32, chr, 16);
    const int name56 = btf__add_array(b, u32, chr, 56);
    const int list = btf__add_struct(b, "list_head", 16);
    const int listp = btf__add_ptr(b, list);
    btf__add_field(b, "next", listp, 0, 0);
    btf__add_field(b, "prev", listp, 64, 0);
    const int thread = btf__add_struct(b, "thread_struct", 64);
    btf__add_field(b, "es", u64, 0, 0);
    btf__add_field(b, "sp", u64, 64, 0);
    const int ids = btf__add_struct(b, nullptr, 8);  // anonymous
    btf__add_field(b, "pid", i32, 0, 0);
    btf__add_field(b, "tgid", i32, 32, 0);
    btf__add_struct(b, "task_struct", kTaskSize);
    btf__add_field(b, "__state", u32, kTaskState * 8, 0);
    btf__add_field(b, "stack", voidp, kTaskStack * 8, 0);
    btf__add_field(b, "on_cpu", i32, kTaskOnCpu * 8, 0);
    btf__add_field(b, "cpu", u32, kTaskCpu * 8, 0);
    btf__add_field(b, "tasks", list, kTaskTasks * 8, 0);
    btf__add_field(b, nullptr, ids, kTaskIds * 8, 0);
    btf__add_field(b, "thread_node", list, kTaskThreadNode * 8, 0);
    btf__add_field(b, "signal", voidp, kTaskSignal * 8, 0);
    btf__add_field(b, "comm", comm, kTaskComm * 8, 0);
    btf__add_field(b, "thread", thread, kTaskThread * 8, 0);
    btf__add_struct(b, "signal_struct", kSignalSize);
    btf__add_field(b, "thread_head", list, kSignalThreadHead * 8, 0);
    btf__add_struct(b, "rq", kRqSize);
    btf__add_field(b, "curr", voidp, kRqCurr * 8, 0);
    btf__add_field(b, "idle", voidp, kRqIdle * 8, 0);
    const int stack_words = btf__add_array(b, u32, u64, kThreadSize / 8);
    btf__add_union(b, "thread_union", kThreadSize);
    btf__add_field(b, "stack", stack_words, 0, 0);
    const int stack_bytes = btf__add_array(b, u32, chr, kThreadSize);
    btf__add_struct(b, "irq_stack", kThreadSize);
    btf__add_field(b, "stack", stack_bytes, 0, 0);
    const int page = btf__add_array(b, u32, chr, 4096);
    btf__add_struct(b, "cea_exception_stacks", 4 * 4096);
    btf__add_field(b, "DF_stack_guard", page, 0, 0);
    btf__add_field(b, "DF_stack", page, 4096 * 8, 0);
    btf__add_field(b, "NMI_stack_guard", page, 2 * 4096 * 8, 0);
    btf__add_field(b, "NMI_stack", page, 3 * 4096 * 8, 0);
    const int layout = btf__add_struct(b, "module_layout", 16);
    btf__add_field(b, "base", voidp, 0, 0);
    btf__add_field(b, "size", u32, 64, 0);
    btf__add_struct(b, "module", kModSize);
    btf__add_field(b, "state", u32, kModState * 8, 0);
    btf__add_field(b, "list", list, kModList * 8, 0);
    btf__add_field(b, "name", name56, kModName * 8, 0);
    btf__add_field(b, "syms", voidp, kModSyms * 8, 0);
    btf__add_field(b, "num_syms", u32, kModNumSyms * 8, 0);
    btf__add_field(b, "kallsyms", voidp, kModKallsyms * 8, 0);
    btf__add_field(b, "core_layout", layout, kModCoreLayout * 8, 0);
    btf__add_struct(b, "mod_kallsyms", 32);
    btf__add_field(b, "symtab", voidp, 0, 0);
    btf__add_field(b, "num_symtab", u32, 64, 0);
    btf__add_field(b, "strtab", voidp, 128, 0);
    btf__add_field(b, "typetab", voidp, 192, 0);
    if (pcpu_hot_) {
      btf__add_struct(b, "pcpu_hot", 64);
      btf__add_field(b, "current_task", voidp, (kPcpuCurrentTask - kPcpuCurrentTask) * 8, 0);
      btf__add_field(b, "hardirq_stack_ptr", voidp, (kPcpuHardirq - kPcpuCurrentTask) * 8, 0);
    }
    btf__add_struct(b, "kernel_symbol", 12);
    btf__add_field(b, "value_offset", i32, 0, 0);
    btf__add_field(b, "name_offset", i32, 32, 0);
    btf__add_field(b, "namespace_offset", i32, 64, 0);
    std::uint32_t size = 0;
    const void* raw = btf__raw_data(b, &size);
    symbols_["__start_BTF"] = ImageAlloc(size);
    symbols_["__stop_BTF"] = symbols_["__start_BTF"] + size;
    Write(symbols_["__start_BTF"], raw, size);
    btf__free(b);
  }

  // Tokens: every printable ASCII character stands for itself; the other byte values stand
  // for common substrings, as scripts/kallsyms's table compression would produce.
  static std::vector<std::string> Tokens() {
    std::vector<std::string> t(256);
    const char* multi[] = {"_func", "init_", "task", "per_cpu", "kallsyms_", "__"};
    int m = 0;
    for (int i = 0; i < 256; ++i) {
      if (i >= 0x20 && i < 0x7f) {
        t[i] = std::string(1, static_cast<char>(i));
      } else {
        t[i] = std::string(multi[m % 6]) + (m >= 6 ? std::to_string(m) : "");
        ++m;
      }
    }
    return t;
  }

  static std::vector<std::uint8_t> Compress(const std::string& text,
                                            const std::vector<std::string>& tokens) {
    std::vector<std::uint8_t> out;
    std::size_t i = 0;
    while (i < text.size()) {
      int best = -1;
      for (int t = 0; t < 256; ++t) {
        if (t >= 0x20 && t < 0x7f) continue;
        if (text.compare(i, tokens[t].size(), tokens[t]) == 0 &&
            (best < 0 || tokens[t].size() > tokens[best].size())) {
          best = t;
        }
      }
      if (best < 0) best = static_cast<unsigned char>(text[i]);
      out.push_back(static_cast<std::uint8_t>(best));
      i += tokens[best].size();
    }
    return out;
  }

 public:
  // The symbols as the kernel's /proc/kallsyms would list them (type, name, value), in order.
  struct Expected {
    char type;
    std::string name;
    std::uint64_t value;
  };
  const std::vector<Expected>& expected_symbols() const { return expected_; }

 private:
  void BuildKallsyms() {
    // Per-cpu symbols first (lowest values), then the image's, in address order.
    expected_ = {{'A', "__per_cpu_start", 0}};
    if (pcpu_hot_) {
      expected_.push_back({'A', "pcpu_hot", kPcpuCurrentTask});
    } else {
      expected_.push_back({'A', "current_task", kPcpuCurrentTask});
      expected_.push_back({'A', "hardirq_stack_ptr", kPcpuHardirq});
    }
    expected_.push_back({'A', "cea_exception_stacks", kPcpuCea});
    expected_.push_back({'A', "runqueues", kPcpuRunqueues});
    expected_.push_back({'A', "__per_cpu_end", kPcpuEnd});
    symbols_["__per_cpu_end"] = kPcpuEnd;
    std::vector<std::pair<std::uint64_t, std::string>> image;
    for (const auto& [name, va] : symbols_) {
      if (va < kImageVa) continue;
      image.push_back({va, name});
    }
    std::sort(image.begin(), image.end());
    for (const auto& [va, name] : image) {
      const bool text = va < symbols_["_etext"];
      std::string n = name.substr(0, name.find('#'));
      const char type = n == "dup_func" ? 't' : text ? 'T' : n.find("BTF") != std::string::npos ? 'R' : 'D';
      expected_.push_back({type, n, va});
    }
    const std::uint64_t base = image.front().first;
    // The tables are placed after everything else in the image, in the 6.1 order.
    const auto tokens = Tokens();
    // Reserve the kallsyms tables' own symbols so they appear in the expected list too: they
    // are placed after every symbol above, so the order stays sorted.
    const std::uint32_t n = static_cast<std::uint32_t>(expected_.size() + 7);
    const std::uint64_t offsets = ImageAlloc(4 * n);
    const std::uint64_t rel = ImageAlloc(8);
    const std::uint64_t num = ImageAlloc(4);
    const std::uint64_t names = ImageAlloc(0, 8);
    const std::vector<std::pair<std::string, std::uint64_t>> tables = {
        {"kallsyms_offsets", offsets}, {"kallsyms_relative_base", rel}, {"kallsyms_num_syms", num},
        {"kallsyms_names", names}};
    for (const auto& [name, va] : tables) {
      symbols_[name] = va;
      expected_.push_back({'R', name, va});
    }
    // names, then token table and index; their symbols point where they will land.
    std::vector<std::uint8_t> blob;
    std::vector<std::uint8_t> token_table;
    std::vector<std::uint16_t> token_index(256);
    for (int t = 0; t < 256; ++t) {
      token_index[t] = static_cast<std::uint16_t>(token_table.size());
      token_table.insert(token_table.end(), tokens[t].begin(), tokens[t].end());
      token_table.push_back(0);
    }
    // Names length is known only after compression; the last three symbols' values depend on
    // it, so compress everything but them first, then append them.
    auto encode = [&](const Expected& e) {
      std::vector<std::uint8_t> c = Compress(std::string(1, e.type) + e.name, tokens);
      blob.push_back(static_cast<std::uint8_t>(c.size()));
      blob.insert(blob.end(), c.begin(), c.end());
    };
    for (const Expected& e : expected_) encode(e);
    // Three more symbols follow; each name is short, so bound their encoded size.
    const std::string tail[3] = {"kallsyms_markers", "kallsyms_token_table", "kallsyms_token_index"};
    std::size_t tail_bytes = 0;
    for (const std::string& t : tail) tail_bytes += 1 + Compress("R" + t, tokens).size();
    const std::uint64_t markers = names + blob.size() + tail_bytes;
    const std::uint64_t table_va = markers + 8;
    const std::uint64_t index_va = table_va + token_table.size() + 8;
    const std::uint64_t tail_va[3] = {markers, table_va, index_va};
    for (int i = 0; i < 3; ++i) {
      expected_.push_back({'R', tail[i], tail_va[i]});
      encode(expected_.back());
      symbols_[tail[i]] = tail_va[i];
    }
    ImageAlloc(blob.size() + 8 + token_table.size() + 8 + 512, 1);
    Write(names, blob.data(), blob.size());
    Write(table_va, token_table.data(), token_table.size());
    Write(index_va, token_index.data(), 512);
    Write64(rel, base);
    Write32(num, n);
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint64_t v = expected_[i].value;
      const std::int32_t off = v < kImageVa ? static_cast<std::int32_t>(v)
                                            : static_cast<std::int32_t>(static_cast<std::int64_t>(base - 1 - v));
      Write32(offsets + 4 * i, static_cast<std::uint32_t>(off));
    }
  }

  void BuildVmcoreinfo() {
    const std::int64_t phys_base =
        static_cast<std::int64_t>(kImagePa - (kImageVa - patcher::kStartKernelMap));
    symbols_["init_top_pgt"] = root_va_;
    std::string text;
    text += std::string("OSRELEASE=") + kRelease + "\n";
    text += std::string("BUILD-ID=") + kBuildId + "\n";
    text += "PAGESIZE=4096\n";
    auto sym = [&](const char* n) {
      char buf[128];
      std::snprintf(buf, sizeof buf, "SYMBOL(%s)=%llx\n", n,
                    static_cast<unsigned long long>(symbols_.at(n)));
      text += buf;
    };
    sym("init_uts_ns");
    text += "OFFSET(uts_namespace.name)=0\n";
    sym("_stext");
    for (const char* n : {"kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table",
                          "kallsyms_token_index", "kallsyms_offsets", "kallsyms_relative_base"}) {
      sym(n);
    }
    text += "NUMBER(phys_base)=" + std::to_string(phys_base) + "\n";
    sym("init_top_pgt");
    text += "NUMBER(pgtable_l5_enabled)=0\n";
    char buf[64];
    std::snprintf(buf, sizeof buf, "KERNELOFFSET=%llx\n", static_cast<unsigned long long>(kKaslr));
    text += buf;
    vmcoreinfo_text_ = text;
    mem_.Write(kVmcoreinfoPa, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  }

 public:
  const std::string& vmcoreinfo_text() const { return vmcoreinfo_text_; }

  // What a previous boot of the same kernel build left behind: its vmcoreinfo (bare text, at
  // `pa`) with the image `va_shift` bytes higher in virtual memory and at `old_image_pa` in
  // physical memory, and that boot's init_uts_ns at its old physical place still holding the
  // same release, so the check against the image alone accepts the copy. Returns the text.
  std::string WriteStaleVmcoreinfo(std::uint64_t pa, std::uint64_t va_shift, std::uint64_t old_image_pa) {
    const std::uint64_t old_image_va = kImageVa + va_shift;
    const std::int64_t old_phys_base =
        static_cast<std::int64_t>(old_image_pa - (old_image_va - patcher::kStartKernelMap));
    std::string out;
    std::size_t at = 0;
    while (at < vmcoreinfo_text_.size()) {
      const std::size_t nl = vmcoreinfo_text_.find('\n', at);
      std::string line = vmcoreinfo_text_.substr(at, nl - at);
      at = nl + 1;
      const std::size_t eq = line.find('=');
      const std::string key = line.substr(0, eq);
      char buf[64];
      if (key.rfind("SYMBOL(", 0) == 0) {
        const std::uint64_t v = std::stoull(line.substr(eq + 1), nullptr, 16);
        std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v + va_shift));
        line = key + "=" + buf;
      } else if (key == "NUMBER(phys_base)") {
        line = key + "=" + std::to_string(old_phys_base);
      } else if (key == "KERNELOFFSET") {
        std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(kKaslr + va_shift));
        line = key + "=" + buf;
      }
      out += line + "\n";
    }
    mem_.Write(pa, std::vector<std::uint8_t>(4096, 0));
    mem_.Write(pa, std::span(reinterpret_cast<const std::uint8_t*>(out.data()), out.size()));
    const std::string release = kRelease;
    mem_.Write(old_image_pa + (Symbol("init_uts_ns") - kImageVa) + 2 * 65,
               std::span(reinterpret_cast<const std::uint8_t*>(release.c_str()), release.size() + 1));
    return out;
  }

 private:
  FakePhysMemory mem_;
  bool pcpu_hot_ = false;
  std::uint64_t image_next_ = 0, heap_next_ = 0, root_va_ = 0;
  std::map<std::string, std::uint64_t> symbols_;
  std::vector<Task> tasks_;
  std::uint64_t idle1_ = 0, module_ = 0;
  std::uint64_t percpu_[2] = {};
  std::vector<vmm::VcpuState> vcpus_;
  std::vector<Expected> expected_;
  std::string vmcoreinfo_text_;
};

}  // namespace hv::testing
