/* Same-host transport: a peer's memfd-backed regions are mapped into this
 * process once and requests are plain memcpy, with no thread on the other side.
 *
 * How the descriptors travel: the owner's engine listens on an abstract unix
 * socket (its name is in the tcp handshake hello). A peer on the same host
 * (equal boot_id) connects, runs the same authenticated handshake, then asks
 * for the list; the answer carries (base, len, offset) per region and the
 * memfds themselves as SCM_RIGHTS. SCM_RIGHTS was chosen over opening
 * /proc/<pid>/fd/<n> because it needs no ptrace permission, works across user
 * namespaces, and the owner decides (after authentication) what to hand out.
 * The connection stays open: when the owner exits, it reads as hung up and the
 * mappings are dropped before the next request. */
#include "transport_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "checksum.h"
#include "engine_int.h"

#define SHM_LIST 0x4c534d53u  /* "SMSL" request */
#define SHM_REFRESH_NS 50000000ull

typedef struct {
    uint64_t base, len, fd_off;
} shm_entry;

int mcs_shm_map_at(int fd, uint64_t len, uint64_t off, int writable, mcs_shm_map_t *m) {
    if (fd < 0 || len == 0) return MCS_E_INVALID_PARAMS;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t delta = off % page;
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *a = mmap(NULL, len + delta, prot, MAP_SHARED | MAP_POPULATE, fd, (off_t)(off - delta));
    if (a == MAP_FAILED) return MCS_E_INVALID_PARAMS;
    m->map_addr = a;
    m->map_len = len + delta;
    m->ptr = (uint8_t *)a + delta;
    m->len = len;
    return 0;
}

int mcs_shm_map(int fd, uint64_t len, int writable, uint64_t *addr_out) {
    mcs_shm_map_t m;
    if (!addr_out) return MCS_E_INVALID_PARAMS;
    int rc = mcs_shm_map_at(fd, len, 0, writable, &m);
    if (rc == 0) *addr_out = (uint64_t)(uintptr_t)m.ptr;
    return rc;
}

int mcs_shm_unmap(uint64_t addr, uint64_t len) {
    if (addr == 0 || len == 0) return MCS_E_INVALID_PARAMS;
    return munmap((void *)(uintptr_t)addr, len) == 0 ? 0 : MCS_E_INVALID_PARAMS;
}

/* ----------------------------------------------------------- owner side */

static int send_list(mcs_engine *e, int fd) {
    shm_entry ent[MCS_MAX_SHM_MAPS];
    int fds[MCS_MAX_SHM_MAPS];
    uint32_t count = 0;
    /* Duplicate the descriptors under the lock and send outside it: a peer
     * that stops reading must not stall registration for everyone. */
    pthread_mutex_lock(&e->reg_mu);
    for (int i = 0; i < e->nregions && count < MCS_MAX_SHM_MAPS; i++) {
        mcs_region *r = &e->regions[i];
        if (r->fd < 0 || r->dying) continue;
        int d = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
        if (d < 0) continue;
        ent[count] = (shm_entry){r->base, r->len, r->fd_off};
        fds[count++] = d;
    }
    pthread_mutex_unlock(&e->reg_mu);
    uint32_t head[2] = {SHM_LIST, count};
    struct iovec iov[2] = {{head, sizeof head}, {ent, count * sizeof(shm_entry)}};
    union {
        char buf[CMSG_SPACE(sizeof(int) * MCS_MAX_SHM_MAPS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = count ? 2 : 1};
    if (count) {
        m.msg_control = ctl.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
    }
    ssize_t r;
    do {
        r = sendmsg(fd, &m, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    for (uint32_t i = 0; i < count; i++) close(fds[i]);  /* the message holds its own copies */
    size_t want = sizeof head + count * sizeof(shm_entry);
    if (r < 0) return MCS_E_TRANSFER_FAIL;
    if ((size_t)r < want) {  /* the rest of the bytes (descriptors went with the first) */
        uint8_t all[sizeof head + sizeof ent];
        memcpy(all, head, sizeof head);
        memcpy(all + sizeof head, ent, count * sizeof(shm_entry));
        return mcs_write_full(fd, all + r, want - (size_t)r);
    }
    return 0;
}

int mcs_shm_serve_conn(mcs_engine *e, int fd) {
    for (int n = 0; n < 1000000; n++) {  /* bounded: one list per refresh */
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        uint32_t req;
        if (mcs_read_full(fd, &req, sizeof req)) break;
        if (req != SHM_LIST) {
            atomic_fetch_add(&e->bad_requests, 1);
            break;
        }
        if (send_list(e, fd)) break;
    }
    return 0;
}

/* ------------------------------------------------------------ peer side */

static void unmap_one(mcs_engine *e, mcs_shm_map_t *m) {
    munmap(m->map_addr, m->map_len);
    atomic_fetch_sub(&e->shm_mappings, 1);
}

/* Ask for the list and rebuild the mappings. Caller holds shm_lock for writing. */
static int refresh_locked(mcs_engine *e, mcs_peer *p) {
    p->last_refresh_ns = mcs_now_ns();
    uint32_t req = SHM_LIST;
    if (p->shm_sock < 0 || mcs_write_full(p->shm_sock, &req, sizeof req)) return MCS_E_TRANSFER_FAIL;
    uint32_t head[2];
    shm_entry ent[MCS_MAX_SHM_MAPS];
    union {
        char buf[CMSG_SPACE(sizeof(int) * MCS_MAX_SHM_MAPS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {head, sizeof head};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                       .msg_controllen = sizeof ctl.buf};
    ssize_t r;
    do {
        r = recvmsg(p->shm_sock, &m, MSG_WAITALL | MSG_CMSG_CLOEXEC);
    } while (r < 0 && errno == EINTR);
    int fds[MCS_MAX_SHM_MAPS], nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k && nfds < MCS_MAX_SHM_MAPS; i++)
                memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    int rc = 0;
    if (r != (ssize_t)sizeof head || head[0] != SHM_LIST || head[1] > MCS_MAX_SHM_MAPS ||
        head[1] != (uint32_t)nfds || (m.msg_flags & MSG_CTRUNC))
        rc = MCS_E_TRANSFER_FAIL;
    if (rc == 0 && nfds > 0 && mcs_read_full(p->shm_sock, ent, (size_t)nfds * sizeof(shm_entry)))
        rc = MCS_E_TRANSFER_FAIL;
    if (rc == 0) {
        mcs_shm_map_t next[MCS_MAX_SHM_MAPS];
        int nn = 0;
        for (int i = 0; i < nfds; i++) {
            if (ent[i].len == 0 || ent[i].base + ent[i].len < ent[i].base) continue;
            int kept = 0;
            for (int j = 0; j < p->nmaps; j++) {
                if (p->maps[j].ptr && p->maps[j].remote_base == ent[i].base &&
                    p->maps[j].len == ent[i].len) {
                    next[nn++] = p->maps[j];
                    p->maps[j].ptr = NULL;  /* moved */
                    kept = 1;
                    break;
                }
            }
            if (!kept && mcs_shm_map_at(fds[i], ent[i].len, ent[i].fd_off, 1, &next[nn]) == 0) {
                next[nn++].remote_base = ent[i].base;
                atomic_fetch_add(&e->shm_mappings, 1);
            }
        }
        for (int j = 0; j < p->nmaps; j++)
            if (p->maps[j].ptr) unmap_one(e, &p->maps[j]);  /* no longer offered */
        memcpy(p->maps, next, (size_t)nn * sizeof next[0]);
        p->nmaps = nn;
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);  /* a mapping keeps its own reference */
    return rc;
}

int mcs_shm_refresh(mcs_engine *e, mcs_peer *p) {
    pthread_rwlock_wrlock(&p->shm_lock);
    int rc = refresh_locked(e, p);
    pthread_rwlock_unlock(&p->shm_lock);
    return rc;
}

int mcs_shm_peer_connect(mcs_engine *e, mcs_peer *p) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return MCS_E_RPC_FAIL;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t n = strnlen(p->unix_name, MCS_UNIX_NAME - 1);
    memcpy(a.sun_path + 1, p->unix_name, n);  /* abstract namespace: leading NUL */
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    mcs_sock_tune(e, fd, 0);
    if (connect(fd, (struct sockaddr *)&a, alen) < 0 || mcs_hs_client(e, fd, NULL) != 0) {
        close(fd);
        return MCS_E_RPC_FAIL;
    }
    pthread_rwlock_wrlock(&p->shm_lock);
    p->shm_sock = fd;
    int rc = refresh_locked(e, p);
    pthread_rwlock_unlock(&p->shm_lock);
    if (rc) mcs_shm_peer_release(e, p);
    return rc;
}

void mcs_shm_peer_release(mcs_engine *e, mcs_peer *p) {
    pthread_rwlock_wrlock(&p->shm_lock);
    for (int j = 0; j < p->nmaps; j++)
        if (p->maps[j].ptr) unmap_one(e, &p->maps[j]);
    p->nmaps = 0;
    if (p->shm_sock >= 0) close(p->shm_sock);
    p->shm_sock = -1;
    pthread_rwlock_unlock(&p->shm_lock);
}

int mcs_shm_peer_alive(mcs_peer *p) {
    pthread_rwlock_rdlock(&p->shm_lock);
    int alive = 1;
    if (p->shm_sock >= 0) {
        /* The owner never writes unprompted, so anything readable means it hung up. */
        struct pollfd pf = {.fd = p->shm_sock, .events = POLLIN | POLLRDHUP};
        if (poll(&pf, 1, 0) > 0) alive = 0;
    }
    pthread_rwlock_unlock(&p->shm_lock);
    return alive;
}

static void copy(const mcs_request *r, mcs_rec_split *rec, const void *remote) {
    if (r->opcode == MCS_OP_WRITE && rec && rec->wr) {
        /* A record write: the value, checksummed in the copy's pass, then the
         * header last (a reader never sees a valid header before its value). */
        uint8_t *dst = (uint8_t *)remote;
        rec->crc = mcs_copy_crc32c(dst + rec->hdr_len, (const void *)(uintptr_t)r->local,
                                   r->length - rec->hdr_len, 0);
        mcs_recw_encode(rec->wr, rec->crc);
        atomic_thread_fence(memory_order_release);
        memcpy(dst, rec->wr->hdr, rec->hdr_len);
    } else if (r->opcode == MCS_OP_WRITE) {
        memcpy((void *)remote, (void *)(uintptr_t)r->local, r->length);
    } else if (rec) {   /* a record: header apart, value checksummed in the copy's pass */
        memcpy((void *)(uintptr_t)rec->hdr, remote, rec->hdr_len);
        rec->crc = mcs_copy_crc32c((void *)(uintptr_t)r->local, (const uint8_t *)remote + rec->hdr_len,
                                   r->length - rec->hdr_len, 0);
    } else {
        memcpy((void *)(uintptr_t)r->local, remote, r->length);
    }
}

static int try_mapped(mcs_peer *p, const mcs_request *r, mcs_rec_split *rec) {
    pthread_rwlock_rdlock(&p->shm_lock);
    int hit = 0;
    for (int j = 0; j < p->nmaps; j++) {
        mcs_shm_map_t *m = &p->maps[j];
        if (r->remote >= m->remote_base && r->remote - m->remote_base < m->len &&
            r->length <= m->len - (r->remote - m->remote_base)) {
            copy(r, rec, (uint8_t *)m->ptr + (r->remote - m->remote_base));
            hit = 1;
            break;
        }
    }
    pthread_rwlock_unlock(&p->shm_lock);
    return hit;
}

int mcs_shm_try_copy(mcs_engine *e, mcs_peer *p, const mcs_request *r, mcs_rec_split *rec,
                     int *code) {
    *code = 0;
    if (p->local) {
        int rc = mcs_region_acquire(e, r->remote, r->length);
        if (rc) {
            *code = rc;
            return 1;
        }
        copy(r, rec, (void *)(uintptr_t)r->remote);
        mcs_region_release(e, r->remote);
        return 1;
    }
    if (try_mapped(p, r, rec)) return 1;
    /* A miss may be a region the owner registered after our last list; ask
     * again, at most every 50 ms (the unlocked reads are only a hint). */
    if (p->shm_sock < 0 || mcs_now_ns() - p->last_refresh_ns <= SHM_REFRESH_NS) return 0;
    pthread_rwlock_wrlock(&p->shm_lock);
    int again = p->shm_sock >= 0 && mcs_now_ns() - p->last_refresh_ns > SHM_REFRESH_NS;
    if (again && refresh_locked(e, p) != 0) again = 0;
    pthread_rwlock_unlock(&p->shm_lock);
    return again ? try_mapped(p, r, rec) : 0;
}
