#include "common.h"
int max_entries = 20;
int get_max(void) { return max_entries; }
