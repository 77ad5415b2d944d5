// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch that hvpatch refuses when it cannot give the patch a shadow module (no guest BTF):
// its new code reads user memory with unsafe_get_user(),
// which needs an exception table entry (__ex_table) and STAC/CLAC alternatives
// (.altinstructions). Both only work when the guest kernel registers them at module load.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>

static int hvp_uaccess_cmdline_show(struct seq_file *m, void *v)
{
	const int __user *p = (const int __user *)m->private;
	int val = 0;

	if (p && user_access_begin(p, sizeof(*p))) {
		unsafe_get_user(val, p, fault);
		user_access_end();
	}
	seq_printf(m, "hvp_uaccess: %d\n", val);
	return 0;
fault:
	user_access_end();
	return -EFAULT;
}

static struct klp_func hvp_uaccess_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = hvp_uaccess_cmdline_show },
	{}
};

static struct klp_object hvp_uaccess_objs[] = {
	{ .funcs = hvp_uaccess_funcs },
	{}
};

static struct klp_patch hvp_uaccess_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_uaccess_objs,
};

static int hvp_uaccess_init(void)
{
	return klp_enable_patch(&hvp_uaccess_patch);
}

static void hvp_uaccess_exit(void)
{
}

module_init(hvp_uaccess_init);
module_exit(hvp_uaccess_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: user access (exception table), must be refused");
