/* RDMA transport (libibverbs). Compiled only when infiniband/verbs.h exists
 * (MCS_HAVE_RDMA); used only when a device is present. */
#ifndef MCS_TRANSPORT_RDMA_H
#define MCS_TRANSPORT_RDMA_H
/* Number of RDMA devices (0 = none), or a negative errno when the verbs
 * library or kernel support is missing; msg gets a one-line reason. */
int mcs_rdma_probe(char *msg, int msg_cap);
/* 1 when built with libibverbs. */
int mcs_rdma_compiled(void);
struct mcs_engine;
/* Open the device (NULL/"" = first) for this engine: registered regions get
 * memory regions and new peers get an RC queue pair. 0 or an MCS_E* code. */
int mcs_rdma_enable(struct mcs_engine *e, const char *device);
#endif
