// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for BUG/WARN in new code: /proc/cmdline prints a marker after a WARN_ON_ONCE that
// always fires. The WARN's ud2 is found through the patch's __bug_table (module_bug_list), its
// once flag is set in that writable table, the report names the new function (module kallsyms),
// and the backtrace walks through it (the patch's ORC tables). The guest goes on.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_warn_cmdline_show(struct seq_file *m, void *v)
{
	WARN_ON_ONCE(m->size > 0);
	seq_printf(m, "hvp_warn: warned once\n");
	return 0;
}

static struct klp_func hvp_warn_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_warn_cmdline_show },
	{}
};

static struct klp_object hvp_warn_objs[] = {
	{ .funcs = hvp_warn_funcs },
	{}
};

static struct klp_patch hvp_warn_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_warn_objs,
};

static int hvp_warn_init(void)
{
	return klp_enable_patch(&hvp_warn_patch);
}

static void hvp_warn_exit(void)
{
}

module_init(hvp_warn_init);
module_exit(hvp_warn_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: WARN_ON_ONCE in new code (__bug_table, kallsyms, ORC)");
