#ifndef C_LINUX_NETLINK_H
#define C_LINUX_NETLINK_H

// The uapi headers conn-reaper needs, in one place. The conntrack enums are NOT included here:
// libnetfilter_conntrack ships its own copies and the two would clash in one Swift module.
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <stdint.h>

// Values the uapi headers define as macros of a type Swift cannot import, or not at all on older headers.
static const int c_reaper_sol_netlink = 270;          // SOL_NETLINK
static const int c_reaper_netlink_cap_ack = 10;       // NETLINK_CAP_ACK
static const int c_reaper_netlink_get_strict_chk = 12; // NETLINK_GET_STRICT_CHK

#endif
