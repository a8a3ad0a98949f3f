#include <stdint.h>
#include <sys/types.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
