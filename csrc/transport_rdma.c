/* RDMA transport: device discovery (see transport_rdma.h). */
#include "transport_rdma.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef MCS_HAVE_RDMA
#include <infiniband/verbs.h>

int mcs_rdma_compiled(void) { return 1; }

int mcs_rdma_probe(char *msg, int msg_cap) {
    int n = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list) {
        int err = errno ? errno : ENODEV;
        if (msg && msg_cap > 0)
            snprintf(msg, (size_t)msg_cap, "ibv_get_device_list failed: %s", strerror(err));
        return -err;
    }
    if (msg && msg_cap > 0) {
        if (n > 0)
            snprintf(msg, (size_t)msg_cap, "%d device(s), first %s", n, ibv_get_device_name(list[0]));
        else
            snprintf(msg, (size_t)msg_cap, "no RDMA device");
    }
    ibv_free_device_list(list);
    return n;
}
#else
int mcs_rdma_compiled(void) { return 0; }

int mcs_rdma_probe(char *msg, int msg_cap) {
    if (msg && msg_cap > 0) snprintf(msg, (size_t)msg_cap, "built without libibverbs");
    return -ENOSYS;
}
#endif
