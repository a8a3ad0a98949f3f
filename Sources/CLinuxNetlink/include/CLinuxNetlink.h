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

// The tcp probes' own loop: epoll and an eventfd to wake it.
#include <sys/epoll.h>
#include <sys/eventfd.h>

// Capabilities: capget/capset are raw syscalls (glibc has no wrapper, and `syscall` is variadic).
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/// Reads the effective, permitted and inheritable sets as 64-bit masks. Returns 0, or -1 with errno.
static inline int c_reaper_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    *effective = (uint64_t)data[1].effective << 32 | data[0].effective;
    *permitted = (uint64_t)data[1].permitted << 32 | data[0].permitted;
    *inheritable = (uint64_t)data[1].inheritable << 32 | data[0].inheritable;
    return 0;
}

/// Sets effective, permitted and inheritable to the given masks. Returns 0, or -1 with errno.
static inline int c_reaper_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2] = {
        { (uint32_t)effective, (uint32_t)permitted, (uint32_t)inheritable },
        { (uint32_t)(effective >> 32), (uint32_t)(permitted >> 32), (uint32_t)(inheritable >> 32) },
    };
    return (int)syscall(SYS_capset, &header, data);
}

static inline int c_reaper_drop_bounding(int capability) { return prctl(PR_CAPBSET_DROP, capability, 0, 0, 0); }
static inline int c_reaper_clear_ambient(void) { return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); }
static inline int c_reaper_raise_ambient(int capability) { return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, capability, 0, 0); }
static inline int c_reaper_last_capability(void) { return CAP_LAST_CAP; }

// setns(fd, CLONE_NEWNET) as a raw syscall: glibc declares setns only under _GNU_SOURCE.
static inline int c_reaper_setns_net(int fd) { return (int)syscall(SYS_setns, fd, 0x40000000 /* CLONE_NEWNET */); }

#endif
