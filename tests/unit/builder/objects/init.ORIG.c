#include "common.h"
int setup_done;
int __init early_setup(void) { setup_done = 1; return 0; }
