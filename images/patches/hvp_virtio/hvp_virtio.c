// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for a function in a loaded module: virtio_console's port_debugfs_show, which
// prints /sys/kernel/debug/virtio-ports/<port> (mount -t debugfs none /sys/kernel/debug).
// The agent does not use that file, so patching it does not disturb the agent's port.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int hvp_virtio_port_debugfs_show(struct seq_file *s, void *data)
{
	seq_puts(s, "hvp_virtio: port_debugfs_show is patched\n");
	return 0;
}

static struct klp_func hvp_virtio_funcs[] = {
	{ .old_name = "port_debugfs_show", .new_func = hvp_virtio_port_debugfs_show },
	{}
};

static struct klp_object hvp_virtio_objs[] = {
	{ .name = "virtio_console", .funcs = hvp_virtio_funcs },
	{}
};

static struct klp_patch hvp_virtio_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_virtio_objs,
};

static int hvp_virtio_init(void)
{
	return klp_enable_patch(&hvp_virtio_patch);
}

static void hvp_virtio_exit(void)
{
}

module_init(hvp_virtio_init);
module_exit(hvp_virtio_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: replaces virtio_console's port_debugfs_show");
