// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for static calls in new code: /proc/cmdline fires vmlinux's exported tracepoint
// power:cpu_frequency (frequency 4242, cpu 7) and says so. A tracepoint call is a static branch
// on the tracepoint's key (__jump_table) around an inline static call `call
// __SCT__tp_func_cpu_frequency` (.static_call_sites). When the guest enables the event, the
// kernel switches the key (jump_label_update on the patch's site) and retargets the static call
// to the event's probe with static_call_update(); hvpatch leaves the patch's static call site
// unregistered, so the call goes through the trampoline, which static_call_update() rewrites
// first: the event must reach the trace buffer from the new code.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <trace/events/power.h>

static int hvp_static_call_cmdline_show(struct seq_file *m, void *v)
{
	trace_cpu_frequency(4242, 7);
	seq_printf(m, "hvp_static_call: fired cpu_frequency\n");
	return 0;
}

static struct klp_func hvp_static_call_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_static_call_cmdline_show },
	{}
};

static struct klp_object hvp_static_call_objs[] = {
	{ .funcs = hvp_static_call_funcs },
	{}
};

static struct klp_patch hvp_static_call_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_static_call_objs,
};

static int hvp_static_call_init(void)
{
	return klp_enable_patch(&hvp_static_call_patch);
}

static void hvp_static_call_exit(void)
{
}

module_init(hvp_static_call_init);
module_exit(hvp_static_call_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: a tracepoint (static key + inline static call) in new code");
