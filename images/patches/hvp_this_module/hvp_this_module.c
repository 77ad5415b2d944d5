// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for the shadow module: /proc/cmdline prints the patch's own struct module as the
// guest kernel sees it: THIS_MODULE->name, its reference count, and the new function's name as
// the kernel's symbol lookup (%ps, module kallsyms) prints it. An in-guest insmod prints the same.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_this_module_cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "hvp_this_module: name=%s refcount=%d live=%d self=%ps\n", THIS_MODULE->name,
		   module_refcount(THIS_MODULE), module_is_live(THIS_MODULE),
		   hvp_this_module_cmdline_show);
	return 0;
}

static struct klp_func hvp_this_module_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_this_module_cmdline_show },
	{}
};

static struct klp_object hvp_this_module_objs[] = {
	{ .funcs = hvp_this_module_funcs },
	{}
};

static struct klp_patch hvp_this_module_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_this_module_objs,
};

static int hvp_this_module_init(void)
{
	return klp_enable_patch(&hvp_this_module_patch);
}

static void hvp_this_module_exit(void)
{
}

module_init(hvp_this_module_init);
module_exit(hvp_this_module_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: THIS_MODULE, module kallsyms and refcount of the shadow module");
