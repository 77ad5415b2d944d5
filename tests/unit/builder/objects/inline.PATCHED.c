#include "common.h"
static inline int clamp_len(int v) { return v > 8 ? 8 : v; }
int read_len(int v) { return clamp_len(v) + 1; }
int other(int v) { return v - 1; }
