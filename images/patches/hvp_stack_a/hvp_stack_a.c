// SPDX-License-Identifier: GPL-2.0-or-later
// Stacking test, patch A: hvp_stack_a and hvp_stack_b both replace cmdline_proc_show. Applied
// A then B, /proc/cmdline shows B; reverting B shows A again.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_stack_a_cmdline_show(struct seq_file *m, void *v)
{
	seq_puts(m, "hvp_stack_a\n");
	return 0;
}

static struct klp_func hvp_stack_a_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_stack_a_cmdline_show },
	{}
};

static struct klp_object hvp_stack_a_objs[] = {
	{ .funcs = hvp_stack_a_funcs },
	{}
};

static struct klp_patch hvp_stack_a_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_stack_a_objs,
};

static int hvp_stack_a_init(void)
{
	return klp_enable_patch(&hvp_stack_a_patch);
}

static void hvp_stack_a_exit(void)
{
}

module_init(hvp_stack_a_init);
module_exit(hvp_stack_a_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: stacking patch A on cmdline_proc_show");
