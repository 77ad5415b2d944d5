#include "common.h"
void say_first(int v) { printk("first %d\n", v); }
void say_second(int v) { printk("second %d\n", v); }
