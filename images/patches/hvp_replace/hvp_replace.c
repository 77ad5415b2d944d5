// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch: an atomic-replace patch (klp_patch.replace) that replaces cmdline_proc_show only.
// Applied over hvp_two (cmdline_proc_show and version_proc_show), it takes over both of that
// patch's functions: /proc/cmdline prints this patch's marker, and /proc/version goes back to
// the kernel's own code, as upstream livepatch does with the no-op functions it adds for
// klp_patch.replace (kernel/livepatch/core.c, klp_add_nops()).
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_replace_cmdline_show(struct seq_file *m, void *v)
{
	/* %ps finds the function through the module tree's bounds: the shadow module must stay
	 * inside them once the replaced patch's module is unlinked. */
	seq_printf(m, "hvp_replace: cmdline %ps\n", hvp_replace_cmdline_show);
	return 0;
}

static struct klp_func hvp_replace_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_replace_cmdline_show },
	{}
};

static struct klp_object hvp_replace_objs[] = {
	{ .funcs = hvp_replace_funcs },
	{}
};

static struct klp_patch hvp_replace_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_replace_objs,
	.replace = true,
};

static int hvp_replace_init(void)
{
	return klp_enable_patch(&hvp_replace_patch);
}

static void hvp_replace_exit(void)
{
}

module_init(hvp_replace_init);
module_exit(hvp_replace_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: atomic replace that keeps only cmdline_proc_show");
