// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch that hvpatch must refuse: its new code counts calls in a per-cpu variable of its
// own, which lives in the module's .data..percpu section. An in-guest load gives a module a
// per-cpu area; hvpatch does not (yet), so it refuses the section by name.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/seq_file.h>

static DEFINE_PER_CPU(unsigned long, hvp_percpu_calls);

static int hvp_percpu_cmdline_show(struct seq_file *m, void *v)
{
	this_cpu_inc(hvp_percpu_calls);
	seq_printf(m, "hvp_percpu: %lu\n", this_cpu_read(hvp_percpu_calls));
	return 0;
}

static struct klp_func hvp_percpu_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_percpu_cmdline_show },
	{}
};

static struct klp_object hvp_percpu_objs[] = {
	{ .funcs = hvp_percpu_funcs },
	{}
};

static struct klp_patch hvp_percpu_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_percpu_objs,
};

static int hvp_percpu_init(void)
{
	return klp_enable_patch(&hvp_percpu_patch);
}

static void hvp_percpu_exit(void)
{
}

module_init(hvp_percpu_init);
module_exit(hvp_percpu_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: module per-cpu data, must be refused");
