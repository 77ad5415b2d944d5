// SPDX-License-Identifier: GPL-2.0-or-later
// Test workload for a patch of ucs2_strnlen (fix 19 of the test fixes): nothing in a guest
// without EFI variables calls it, so /proc/cmdline calls it here, on a terminated string, with
// a limit below its length, and on a buffer that is exactly `maxlength` characters long with no
// terminator (the case the fix is about: the old code reads one character past the limit).
// Expected output either way: "hvp_ucs2: 3 2 4".
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/ucs2_string.h>

static const ucs2_char_t hvp_ucs2_terminated[] = { 'h', 'v', 'p', 0 };
static const ucs2_char_t hvp_ucs2_full[4] = { 'a', 'b', 'c', 'd' };

static int hvp_ucs2_cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "hvp_ucs2: %lu %lu %lu\n", ucs2_strnlen(hvp_ucs2_terminated, 16),
		   ucs2_strnlen(hvp_ucs2_terminated, 2), ucs2_strnlen(hvp_ucs2_full, 4));
	return 0;
}

static struct klp_func hvp_ucs2_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_ucs2_cmdline_show },
	{}
};

static struct klp_object hvp_ucs2_objs[] = {
	{ .funcs = hvp_ucs2_funcs },
	{}
};

static struct klp_patch hvp_ucs2_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_ucs2_objs,
};

static int hvp_ucs2_init(void)
{
	return klp_enable_patch(&hvp_ucs2_patch);
}

static void hvp_ucs2_exit(void)
{
}

module_init(hvp_ucs2_init);
module_exit(hvp_ucs2_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: a caller of ucs2_strnlen, the workload for a patch of it");
