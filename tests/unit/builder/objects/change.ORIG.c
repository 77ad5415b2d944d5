#include "common.h"
int limit_check(int v) { return v > 100 ? -22 : v; }
int untouched(int v) { return v * 3 + 1; }
