// SPDX-License-Identifier: GPL-2.0-or-later
// hvpatch's sample patch: /proc/cmdline prints a marker line instead of the command line.
// A plain livepatch module: it loads with insmod in a guest as well as through hvpatch.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_sample_cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "hvpatch: this kernel was live-patched");
	return 0;
}

static struct klp_func hvp_sample_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_sample_cmdline_show },
	{}
};

static struct klp_object hvp_sample_objs[] = {
	{ .funcs = hvp_sample_funcs },  /* name NULL: vmlinux */
	{}
};

static struct klp_patch hvp_sample_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_sample_objs,
};

static int hvp_sample_init(void)
{
	return klp_enable_patch(&hvp_sample_patch);
}

static void hvp_sample_exit(void)
{
}

module_init(hvp_sample_init);
module_exit(hvp_sample_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch sample: replaces cmdline_proc_show");
