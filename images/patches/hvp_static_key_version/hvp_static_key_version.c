// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch: hvp_static_key's branches on `rfs_needed`, on /proc/version. The shadow test loads
// it in the guest (insmod) while hvp_static_key is applied from the host, so the key's node list
// holds a node the guest allocated beside hvpatch's when hvp_static_key is reverted: the case
// where hvpatch must leave a tombstone (docs/shadow-module.md).
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/seq_file.h>

static int hvp_static_key_version_version_show(struct seq_file *m, void *v)
{
	const char *unlikely = "off", *likely = "off";

	if (static_branch_unlikely(&rfs_needed))
		unlikely = "on";
	if (static_branch_likely(&rfs_needed))
		likely = "on";
	seq_printf(m, "hvp_static_key_version: unlikely=%s likely=%s\n", unlikely, likely);
	return 0;
}

static struct klp_func hvp_static_key_version_funcs[] = {
	{ .old_name = "version_proc_show", .new_func = hvp_static_key_version_version_show },
	{}
};

static struct klp_object hvp_static_key_version_objs[] = {
	{ .funcs = hvp_static_key_version_funcs },
	{}
};

static struct klp_patch hvp_static_key_version_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_static_key_version_objs,
};

static int hvp_static_key_version_init(void)
{
	return klp_enable_patch(&hvp_static_key_version_patch);
}

static void hvp_static_key_version_exit(void)
{
}

module_init(hvp_static_key_version_init);
module_exit(hvp_static_key_version_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: rfs_needed branches on /proc/version, loaded in the guest beside hvp_static_key");
