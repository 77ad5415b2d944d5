#include "common.h"
int max_entries = 10;
int get_max(void) { return max_entries; }
