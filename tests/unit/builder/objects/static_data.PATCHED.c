#include "common.h"
static int calls;
static int rejected;
static noinline int scale(int v, int f) { calls++; return v * f + calls; }
int scaled(int v) { if (v < 0) { rejected++; return -1; } return scale(v, 7); }
int scaled2(int v) { return scale(v, 7) + 1; }
