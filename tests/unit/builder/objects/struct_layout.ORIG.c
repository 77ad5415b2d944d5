#include "common.h"
struct conn { int id; int flags; };
struct conn conn_table[4];
int conn_flags(int i) { return conn_table[i].flags; }
