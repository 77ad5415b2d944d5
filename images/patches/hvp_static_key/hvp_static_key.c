// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for static keys in new code: /proc/cmdline prints the state of vmlinux's exported
// key `rfs_needed` as two static branches see it, one unlikely (a nop while the key is off) and
// one likely (a jmp while it is off). The guest switches the key after the apply by writing
// /proc/sys/net/core/rps_sock_flow_entries (nonzero: on, zero: off); both branches must follow,
// which needs the patch's __jump_table sorted and linked to the key (static_key_mod) and its
// sites patched by the guest's own jump_label_update().
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/seq_file.h>

static int hvp_static_key_cmdline_show(struct seq_file *m, void *v)
{
	const char *unlikely = "off", *likely = "off";

	if (static_branch_unlikely(&rfs_needed))
		unlikely = "on";
	if (static_branch_likely(&rfs_needed))
		likely = "on";
	seq_printf(m, "hvp_static_key: unlikely=%s likely=%s\n", unlikely, likely);
	return 0;
}

static struct klp_func hvp_static_key_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_static_key_cmdline_show },
	{}
};

static struct klp_object hvp_static_key_objs[] = {
	{ .funcs = hvp_static_key_funcs },
	{}
};

static struct klp_patch hvp_static_key_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_static_key_objs,
};

static int hvp_static_key_init(void)
{
	return klp_enable_patch(&hvp_static_key_patch);
}

static void hvp_static_key_exit(void)
{
}

module_init(hvp_static_key_init);
module_exit(hvp_static_key_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: a branch on vmlinux's static key rfs_needed (__jump_table)");
