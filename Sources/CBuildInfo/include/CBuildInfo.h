#ifndef C_BUILD_INFO_H
#define C_BUILD_INFO_H

/// The git revision the binary was built from: `make dist` (and `make release`) pass it as
/// -Xcc -DCONN_REAPER_REVISION="..."; any other build reports "unknown".
const char *conn_reaper_revision(void);

#endif
