// SPDX-License-Identifier: GPL-2.0-or-later
// Test patch for the busy check: an equivalent replacement of do_nanosleep (kernel/time/hrtimer.c,
// Linux 6.1), the function a task running `sleep` waits in. While such a task sleeps, its stack
// holds a return address inside do_nanosleep, so the apply must report it busy. Once applied,
// `sleep 1` in the guest must still work: the body below is the 6.1 original, except that it
// counts its calls in hvp_sleep_calls (a data object the new code needs in the arena).
#include <linux/hrtimer.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/restart_block.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>

static unsigned long hvp_sleep_calls;

static int hvp_sleep_do_nanosleep(struct hrtimer_sleeper *t, enum hrtimer_mode mode)
{
	struct restart_block *restart;

	WRITE_ONCE(hvp_sleep_calls, hvp_sleep_calls + 1);
	do {
		set_current_state(TASK_INTERRUPTIBLE | TASK_FREEZABLE);
		hrtimer_sleeper_start_expires(t, mode);

		if (likely(t->task))
			schedule();

		hrtimer_cancel(&t->timer);
		mode = HRTIMER_MODE_ABS;

	} while (t->task && !signal_pending(current));

	__set_current_state(TASK_RUNNING);

	if (!t->task)
		return 0;

	restart = &current->restart_block;
	if (restart->nanosleep.type != TT_NONE) {
		ktime_t rem = hrtimer_expires_remaining(&t->timer);
		struct timespec64 rmt;

		if (rem <= 0)
			return 0;
		rmt = ktime_to_timespec64(rem);

		return nanosleep_copyout(restart, &rmt);
	}
	return -ERESTART_RESTARTBLOCK;
}

static struct klp_func hvp_sleep_funcs[] = {
	{ .old_name = "do_nanosleep", .new_func = hvp_sleep_do_nanosleep },
	{}
};

static struct klp_object hvp_sleep_objs[] = {
	{ .funcs = hvp_sleep_funcs },
	{}
};

static struct klp_patch hvp_sleep_patch = {
	.mod = THIS_MODULE,
	.objs = hvp_sleep_objs,
};

static int hvp_sleep_init(void)
{
	return klp_enable_patch(&hvp_sleep_patch);
}

static void hvp_sleep_exit(void)
{
}

module_init(hvp_sleep_init);
module_exit(hvp_sleep_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("hvpatch test: equivalent replacement of do_nanosleep");
