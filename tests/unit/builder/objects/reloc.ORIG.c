#include "common.h"
noinline int helper_a(int v) { return v + 1; }
noinline int helper_b(int v) { return v + 2; }
int caller(int v) { return helper_a(v); }
