#include "common.h"
struct conn { int id; long cookie; int flags; };
struct conn conn_table[4];
int conn_flags(int i) { return conn_table[i].flags; }
