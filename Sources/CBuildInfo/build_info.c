#include "CBuildInfo.h"

// A C string define is the one way a build command line can hand a value to the binary; Swift's -D
// takes only conditions.
#ifndef CONN_REAPER_REVISION
#define CONN_REAPER_REVISION "unknown"
#endif

const char *conn_reaper_revision(void) { return CONN_REAPER_REVISION; }
