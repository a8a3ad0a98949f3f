// Empty translation unit: SwiftPM needs one source file to build the header-only shim target.
#include "CLinuxNetlink.h"
