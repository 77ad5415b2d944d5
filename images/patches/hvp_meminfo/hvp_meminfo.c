// SPDX-License-Identifier: GPL-2.0-or-later
// Replaces meminfo_proc_show: /proc/meminfo gains a first line saying it was live-patched,
// followed by the real MemTotal/MemFree figures (si_meminfo is exported; this stays short).
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_meminfo_show(struct seq_file *m, void *v)
{
	struct sysinfo i;

	si_meminfo(&i);
	seq_puts(m, "HvpatchLivePatched: 1\n");
	seq_printf(m, "MemTotal:       %8lu kB\n", i.totalram << (PAGE_SHIFT - 10));
	seq_printf(m, "MemFree:        %8lu kB\n", i.freeram << (PAGE_SHIFT - 10));
	return 0;
}

static struct klp_func hvp_meminfo_funcs[] = {
	{ .old_name = "meminfo_proc_show", .new_func = hvp_meminfo_show },
	{}
};

static struct klp_object hvp_meminfo_objs[] = {
	{ .funcs = hvp_meminfo_funcs },
	{}
};

static struct klp_patch hvp_meminfo_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_meminfo_objs,
};

static int hvp_meminfo_init(void)
{
	return klp_enable_patch(&hvp_meminfo_patch);
}

static void hvp_meminfo_exit(void)
{
}

module_init(hvp_meminfo_init);
module_exit(hvp_meminfo_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: replaces meminfo_proc_show");
