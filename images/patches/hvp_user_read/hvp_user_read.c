// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for user access from new code: /dev/null's write reads the first 4 bytes of the
// user buffer with unsafe_get_user() between user_access_begin() and user_access_end(). That
// code carries __ex_table entries (a fault on a bad pointer jumps to the fixup) and STAC/CLAC
// and LFENCE alternatives (without STAC, a read on a SMAP CPU faults). Seen from the guest
// (images/guest/tools/uptr.c): a bad pointer gives -EFAULT and no oops; a valid buffer holding
// "hvp!" is read and the write returns 1 (not 4), proving the read happened.
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/uaccess.h>

static ssize_t hvp_user_read_write_null(struct file *file, const char __user *buf, size_t count,
					loff_t *ppos)
{
	const u32 __user *p = (const u32 __user *)buf;
	u32 v = 0;

	if (count < sizeof(v))
		return count;
	if (!user_access_begin(p, sizeof(v)))
		return -EFAULT;
	unsafe_get_user(v, p, fault);
	user_access_end();
	return v == 0x21707668 /* "hvp!" */ ? 1 : count;
fault:
	user_access_end();
	return -EFAULT;
}

static struct klp_func hvp_user_read_funcs[] = {
	{ .old_name = "write_null", .new_func = hvp_user_read_write_null },
	{}
};

static struct klp_object hvp_user_read_objs[] = {
	{ .funcs = hvp_user_read_funcs },
	{}
};

static struct klp_patch hvp_user_read_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_user_read_objs,
};

static int hvp_user_read_init(void)
{
	return klp_enable_patch(&hvp_user_read_patch);
}

static void hvp_user_read_exit(void)
{
}

module_init(hvp_user_read_init);
module_exit(hvp_user_read_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: user access (exception table, STAC/CLAC alternatives)");
