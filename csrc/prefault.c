#include "prefault.h"

#include <stdint.h>
#include <unistd.h>

size_t mcs_prefault(void *base, size_t len, volatile int *stop) {
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    volatile uint8_t *p = (volatile uint8_t *)base;
    size_t off = 0;
    for (; off < len; off += page) {
        if (stop && *stop) break;
        /* An atomic add of zero dirties the page (a write fault) but cannot lose a
         * concurrent writer's byte the way a read-then-write would. */
        __atomic_fetch_add(&p[off], 0, __ATOMIC_RELAXED);
    }
    return off < len ? off : len;
}
