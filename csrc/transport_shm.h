/* Same-host transport (memfd mappings + memcpy); see transport_shm.c for how
 * descriptors travel. The engine-facing functions are in engine_int.h. */
#ifndef MCS_TRANSPORT_SHM_H
#define MCS_TRANSPORT_SHM_H
#include <stdint.h>

/* Map / unmap a memfd in a process that has no engine (helper for tools). */
int mcs_shm_map(int fd, uint64_t len, int writable, uint64_t *addr_out);
int mcs_shm_unmap(uint64_t addr, uint64_t len);
#endif
