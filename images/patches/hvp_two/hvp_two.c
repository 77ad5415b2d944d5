// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch: replaces two functions at once, so both must switch in the same pause.
// /proc/cmdline and /proc/version each print a marker line.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_two_cmdline_show(struct seq_file *m, void *v)
{
	seq_puts(m, "hvp_two: cmdline\n");
	return 0;
}

static int hvp_two_version_show(struct seq_file *m, void *v)
{
	seq_puts(m, "hvp_two: version\n");
	return 0;
}

static struct klp_func hvp_two_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_two_cmdline_show },
	{ .old_name = "version_proc_show", .new_func = hvp_two_version_show },
	{}
};

static struct klp_object hvp_two_objs[] = {
	{ .funcs = hvp_two_funcs },
	{}
};

static struct klp_patch hvp_two_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_two_objs,
};

static int hvp_two_init(void)
{
	return klp_enable_patch(&hvp_two_patch);
}

static void hvp_two_exit(void)
{
}

module_init(hvp_two_init);
module_exit(hvp_two_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: replaces cmdline_proc_show and version_proc_show");
