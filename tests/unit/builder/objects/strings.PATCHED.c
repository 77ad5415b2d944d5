#include "common.h"
void say_first(int v) { if (v < 0) printk("negative %d in %s\n", v, __func__); printk("first %d\n", v); }
void say_second(int v) { printk("second %d\n", v); }
