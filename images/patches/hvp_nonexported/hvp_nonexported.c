// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch: the new code reads a kernel variable and calls a kernel function that are not
// exported (nr_threads, nr_processes() in kernel/fork.c). An in-guest insmod could not link it
// (modpost only warns because images/build.sh sets KBUILD_MODPOST_WARN); hvpatch resolves both
// from the guest's kallsyms. /proc/cmdline then prints
//   hvp_nonexported: nr_threads=N nr_processes=P
// where N is the number after the '/' in /proc/loadavg (fs/proc/loadavg.c prints nr_threads).
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/sched/stat.h>
#include <linux/seq_file.h>

static int hvp_nonexported_cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "hvp_nonexported: nr_threads=%d nr_processes=%d\n", nr_threads,
		   nr_processes());
	return 0;
}

static struct klp_func hvp_nonexported_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_nonexported_cmdline_show },
	{}
};

static struct klp_object hvp_nonexported_objs[] = {
	{ .funcs = hvp_nonexported_funcs },
	{}
};

static struct klp_patch hvp_nonexported_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_nonexported_objs,
};

static int hvp_nonexported_init(void)
{
	return klp_enable_patch(&hvp_nonexported_patch);
}

static void hvp_nonexported_exit(void)
{
}

module_init(hvp_nonexported_init);
module_exit(hvp_nonexported_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: uses the non-exported nr_threads and nr_processes()");
