/* Transfer engine core: engine object, registration table, peers, batches,
 * the wire header codec and socket helpers. Transports live in
 * transport_{shm,tcp,rdma}.c. */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "engine_int.h"
#include "record.h"

uint64_t mcs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *mcs_strerror(int code) {
    switch (code) {
    case MCS_OK: return "ok";
    case MCS_E_INTERNAL: return "internal error";
    case MCS_E_BUFFER_OVERFLOW: return "range runs past the end of the registered region";
    case MCS_E_INVALID_PARAMS: return "invalid parameters or unregistered address";
    case MCS_E_TRANSFER_FAIL: return "transfer failed (peer gone or protocol error)";
    case MCS_E_CHECKSUM: return "record failed verification";
    case MCS_E_AUTH: return "authentication failed";
    case MCS_E_RPC_FAIL: return "cannot reach the peer";
    case MCS_E_TIMEOUT: return "timed out";
    default: return "unknown error";
    }
}

/* ---------------------------------------------------------------- engine */

void mcs_engine_opts_default(mcs_engine_opts *o) {
    memset(o, 0, sizeof *o);
    o->streams = 4;
    o->window = 8;
    o->slice_bytes = 1ull << 20;
    o->timeout_ms = 30000;
}

static void read_boot_id(char out[40]) {
    memset(out, 0, 40);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f) return;
    if (!fgets(out, 40, f)) out[0] = 0;
    fclose(f);
    out[strcspn(out, "\n")] = 0;
}

mcs_engine *mcs_engine_create(const mcs_engine_opts *opts) {
    mcs_engine_opts o;
    mcs_engine_opts_default(&o);
    if (opts) {
        if (opts->streams > 0) o.streams = opts->streams;
        if (opts->window > 0) o.window = opts->window;
        if (opts->slice_bytes > 0) o.slice_bytes = opts->slice_bytes;
        if (opts->timeout_ms > 0) o.timeout_ms = opts->timeout_ms;
        o.sockbuf = opts->sockbuf > 0 ? opts->sockbuf : 0;
        o.secret = opts->secret;
        o.secret_len = opts->secret_len;
    }
    if (o.streams > MCS_MAX_STREAMS) o.streams = MCS_MAX_STREAMS;
    if (o.window > 256) o.window = 256;
    if (o.slice_bytes < 4096) o.slice_bytes = 4096;
    if (o.slice_bytes > MCS_MAX_SLICE) o.slice_bytes = MCS_MAX_SLICE;
    if (o.secret_len < 0 || o.secret_len > 256 || (o.secret_len > 0 && !o.secret)) return NULL;

    mcs_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->opts = o;
    if (o.secret_len > 0) memcpy(e->secret, o.secret, (size_t)o.secret_len);
    e->secret_len = o.secret_len;
    e->opts.secret = NULL;  /* the copy in e->secret is the one used */
    read_boot_id(e->boot_id);
    pthread_mutex_init(&e->reg_mu, NULL);
    pthread_cond_init(&e->reg_cv, NULL);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->done_cv, NULL);
    pthread_mutex_init(&e->srv_mu, NULL);
    e->listen_fd = e->unix_fd = -1;
    e->wake[0] = e->wake[1] = -1;
    return e;
}

static void batch_release(mcs_batch *b) {
    free(b->rec);
    free(b->rec_mem);
    free(b->st);
    free(b->slices_left);
    free(b->slices);
    free(b);
}

void mcs_engine_destroy(mcs_engine *e) {
    if (!e) return;
    for (int i = 0; i < MCS_MAX_PEERS; i++)
        if (e->peers[i]) mcs_peer_close(e, i);
    mcs_tcp_stop(e);
    mcs_rdma_close(e);
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->nbatch_slots; i++)
        if (e->batches[i]) batch_release(e->batches[i]);
    free(e->batches);
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < e->nregions; i++)
        if (e->regions[i].fd >= 0) close(e->regions[i].fd);
    free(e->regions);
    memset(e->secret, 0, sizeof e->secret);
    pthread_mutex_destroy(&e->reg_mu);
    pthread_cond_destroy(&e->reg_cv);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->done_cv);
    pthread_mutex_destroy(&e->srv_mu);
    free(e);
}

void mcs_engine_stats(mcs_engine *e, mcs_stats *out) {
    memset(out, 0, sizeof *out);
    out->conns_accepted = atomic_load(&e->conns_accepted);
    out->conns_active = atomic_load(&e->conns_active);
    out->bad_requests = atomic_load(&e->bad_requests);
    out->auth_failures = atomic_load(&e->auth_failures);
    out->requests_served = atomic_load(&e->requests_served);
    out->bytes_served = atomic_load(&e->bytes_served);
    out->shm_mappings = atomic_load(&e->shm_mappings);
    pthread_mutex_lock(&e->reg_mu);
    out->regions = (uint64_t)e->nregions;
    for (int i = 0; i < e->nregions; i++) out->registered_bytes += e->regions[i].len;
    pthread_mutex_unlock(&e->reg_mu);
}

/* ---------------------------------------------------------- registration */

/* Index of the last region with base <= addr, or -1. Caller holds reg_mu. */
static int region_floor(mcs_engine *e, uint64_t addr) {
    int lo = 0, hi = e->nregions - 1, ans = -1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (e->regions[mid].base <= addr) {
            ans = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return ans;
}

int mcs_register_fd(mcs_engine *e, uint64_t base, uint64_t len, int fd, uint64_t fd_off) {
    if (!e || base == 0 || len == 0 || base + len < base) return MCS_E_INVALID_PARAMS;
    int dfd = -1;
    if (fd >= 0) {
        dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dfd < 0) return MCS_E_INVALID_PARAMS;
    }
    pthread_mutex_lock(&e->reg_mu);
    int at = region_floor(e, base);
    int overlap = (at >= 0 && e->regions[at].base + e->regions[at].len > base) ||
                  (at + 1 < e->nregions && e->regions[at + 1].base < base + len);
    if (overlap) {
        pthread_mutex_unlock(&e->reg_mu);
        if (dfd >= 0) close(dfd);
        return MCS_E_INVALID_PARAMS;
    }
    if (e->nregions == e->capregions) {
        int cap = e->capregions ? 2 * e->capregions : 16;
        mcs_region *r = realloc(e->regions, (size_t)cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&e->reg_mu);
            if (dfd >= 0) close(dfd);
            return MCS_E_INTERNAL;
        }
        e->regions = r;
        e->capregions = cap;
    }
    int pos = at + 1;
    memmove(&e->regions[pos + 1], &e->regions[pos],
            (size_t)(e->nregions - pos) * sizeof(mcs_region));
    e->regions[pos] = (mcs_region){.base = base, .len = len, .fd = dfd, .fd_off = fd_off};
    e->nregions++;
    mcs_rdma_reg(e, base, len);
    pthread_mutex_unlock(&e->reg_mu);
    return 0;
}

int mcs_register(mcs_engine *e, uint64_t base, uint64_t len) {
    return mcs_register_fd(e, base, len, -1, 0);
}

int mcs_unregister(mcs_engine *e, uint64_t base) {
    if (!e) return MCS_E_INVALID_PARAMS;
    pthread_mutex_lock(&e->reg_mu);
    int at = region_floor(e, base);
    if (at < 0 || e->regions[at].base != base || e->regions[at].dying) {
        pthread_mutex_unlock(&e->reg_mu);
        return MCS_E_INVALID_PARAMS;
    }
    e->regions[at].dying = 1;
    /* Wait for server operations inside the region; indices may shift while
     * we sleep, so look the region up again each time. */
    for (;;) {
        at = region_floor(e, base);
        if (e->regions[at].busy == 0) break;
        pthread_cond_wait(&e->reg_cv, &e->reg_mu);
    }
    int fd = e->regions[at].fd;
    memmove(&e->regions[at], &e->regions[at + 1],
            (size_t)(e->nregions - at - 1) * sizeof(mcs_region));
    e->nregions--;
    mcs_rdma_dereg(e, base);
    pthread_mutex_unlock(&e->reg_mu);
    if (fd >= 0) close(fd);
    return 0;
}

static int range_code(mcs_engine *e, uint64_t addr, uint64_t len, int *idx) {
    if (len == 0 || addr + len < addr) return MCS_E_INVALID_PARAMS;
    int at = region_floor(e, addr);
    if (at < 0) return MCS_E_INVALID_PARAMS;
    mcs_region *r = &e->regions[at];
    if (r->dying || addr >= r->base + r->len) return MCS_E_INVALID_PARAMS;
    if (len > r->base + r->len - addr) return MCS_E_BUFFER_OVERFLOW;
    *idx = at;
    return 0;
}

int mcs_check_range(mcs_engine *e, uint64_t addr, uint64_t len) {
    int idx;
    pthread_mutex_lock(&e->reg_mu);
    int rc = range_code(e, addr, len, &idx);
    pthread_mutex_unlock(&e->reg_mu);
    return rc;
}

int mcs_region_acquire(mcs_engine *e, uint64_t addr, uint64_t len) {
    int idx;
    pthread_mutex_lock(&e->reg_mu);
    int rc = range_code(e, addr, len, &idx);
    if (rc == 0) e->regions[idx].busy++;
    pthread_mutex_unlock(&e->reg_mu);
    return rc;
}

void mcs_region_release(mcs_engine *e, uint64_t addr) {
    pthread_mutex_lock(&e->reg_mu);
    int at = region_floor(e, addr);
    if (at >= 0 && e->regions[at].busy > 0 && --e->regions[at].busy == 0 && e->regions[at].dying)
        pthread_cond_broadcast(&e->reg_cv);
    pthread_mutex_unlock(&e->reg_mu);
}

/* ------------------------------------------------------------ wire codec */

void mcs_wire_encode(uint8_t out[MCS_WIRE_HDR], const mcs_wire_hdr *h) { memcpy(out, h, MCS_WIRE_HDR); }
void mcs_wire_decode(mcs_wire_hdr *h, const uint8_t in[MCS_WIRE_HDR]) { memcpy(h, in, MCS_WIRE_HDR); }

/* Structural checks of a request header; the range check is separate. */
int mcs_wire_validate(mcs_engine *e, const mcs_wire_hdr *h) {
    (void)e;
    if (h->magic != MCS_WIRE_MAGIC || h->version != MCS_WIRE_VERSION) return MCS_E_TRANSFER_FAIL;
    if (h->status != 0 || h->reserved != 0) return MCS_E_TRANSFER_FAIL;
    switch (h->opcode) {
    case MCS_WOP_PING:
        return (h->addr == 0 && h->length == 0) ? 0 : MCS_E_INVALID_PARAMS;
    case MCS_WOP_RDMA:  /* only an engine with rdma enabled accepts it */
        return (e && e->rdma && h->addr == 0 && h->length > 0 && h->length <= 4096)
                   ? 0 : MCS_E_INVALID_PARAMS;
    case MCS_WOP_READ:
    case MCS_WOP_WRITE:
        if (h->length == 0 || h->length > MCS_MAX_SLICE) return MCS_E_INVALID_PARAMS;
        return 0;
    default:
        return MCS_E_TRANSFER_FAIL;
    }
}

int mcs_wire_check(mcs_engine *e, const uint8_t *hdr, int n) {
    if (!e || !hdr || n != MCS_WIRE_HDR) return MCS_E_INVALID_PARAMS;
    mcs_wire_hdr h;
    mcs_wire_decode(&h, hdr);
    int rc = mcs_wire_validate(e, &h);
    if (rc == 0 && (h.opcode == MCS_WOP_READ || h.opcode == MCS_WOP_WRITE))
        rc = mcs_check_range(e, h.addr, h.length);
    return rc;
}

/* ------------------------------------------------------------ socket i/o */

static int io_err(void) {
    return (errno == EAGAIN || errno == EWOULDBLOCK) ? MCS_E_TIMEOUT : MCS_E_TRANSFER_FAIL;
}

int mcs_read_full(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = recv(fd, p, n, MSG_WAITALL);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r == 0) {
            return MCS_E_TRANSFER_FAIL;
        } else if (errno != EINTR) {
            return io_err();
        }
    }
    return 0;
}

int mcs_write_full(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r < 0 && errno != EINTR) {
            return io_err();
        }
    }
    return 0;
}

int mcs_writev_full(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
        ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            return io_err();
        }
        size_t done = (size_t)r;
        while (cnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

void mcs_sock_tune(mcs_engine *e, int fd, int tcp) {
    int one = 1;
    if (tcp) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (e->opts.sockbuf > 0) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &e->opts.sockbuf, sizeof e->opts.sockbuf);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &e->opts.sockbuf, sizeof e->opts.sockbuf);
    }
    struct timeval tv = {.tv_sec = e->opts.timeout_ms / 1000,
                         .tv_usec = (e->opts.timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int mcs_listen(mcs_engine *e, const char *host, int port, int *bound_port) {
    if (!e || port < 0 || port > 65535) return MCS_E_INVALID_PARAMS;
    return mcs_tcp_listen(e, host && *host ? host : "127.0.0.1", port, bound_port);
}

/* ----------------------------------------------------------------- peers */

static mcs_peer *peer_new(mcs_engine *e) {
    mcs_peer *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_rwlock_init(&p->shm_lock, NULL);
    p->e = e;
    p->shm_sock = -1;
    p->nstreams = e->opts.streams;
    for (int i = 0; i < MCS_MAX_STREAMS; i++) {
        p->streams[i].peer = p;
        p->streams[i].idx = i;
        p->streams[i].fd = -1;
    }
    return p;
}

static void peer_free(mcs_peer *p) {
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_rwlock_destroy(&p->shm_lock);
    free(p);
}

static int peer_install(mcs_engine *e, mcs_peer *p) {
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < MCS_MAX_PEERS; i++) {
        if (!e->peers[i]) {
            p->id = i;
            e->peers[i] = p;
            pthread_mutex_unlock(&e->mu);
            return i;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return MCS_E_INVALID_PARAMS;
}

int mcs_peer_open_local(mcs_engine *e) {
    if (!e) return MCS_E_INVALID_PARAMS;
    mcs_peer *p = peer_new(e);
    if (!p) return MCS_E_INTERNAL;
    p->local = 1;
    int id = peer_install(e, p);
    if (id < 0) peer_free(p);
    return id;
}

int mcs_peer_open(mcs_engine *e, const char *host, int port, int flags) {
    if (!e || !host || !*host || strlen(host) >= sizeof(((mcs_peer *)0)->host) || port <= 0 ||
        port > 65535)
        return MCS_E_INVALID_PARAMS;
    mcs_peer *p = peer_new(e);
    if (!p) return MCS_E_INTERNAL;
    snprintf(p->host, sizeof p->host, "%s", host);
    p->port = port;
    p->flags = flags;
    /* The first stream connects now so that a wrong address or secret fails
     * here, with a clear code, rather than in the first transfer. */
    mcs_hs_hello hello;
    int fd = mcs_tcp_connect(e, host, port, &hello);
    if (fd < 0) {
        peer_free(p);
        return fd;
    }
    p->streams[0].fd = fd;
    memcpy(p->boot_id, hello.boot_id, sizeof p->boot_id);
    memcpy(p->unix_name, hello.unix_name, sizeof p->unix_name);
    if (!(flags & MCS_PEER_NO_SHM) && e->boot_id[0] && strcmp(e->boot_id, p->boot_id) == 0 &&
        p->unix_name[0])
        mcs_shm_peer_connect(e, p);  /* best effort: tcp serves what shm cannot */
    else if (e->rdma)
        mcs_rdma_peer_connect(e, p);  /* best effort too */
    int rc = mcs_tcp_peer_start(e, p);
    int id = rc < 0 ? rc : peer_install(e, p);
    if (id < 0) {
        mcs_tcp_peer_stop(e, p);
        mcs_rdma_peer_release(e, p);
        mcs_shm_peer_release(e, p);
        peer_free(p);
    }
    return id;
}

static mcs_peer *peer_get(mcs_engine *e, int id) {
    if (id < 0 || id >= MCS_MAX_PEERS) return NULL;
    pthread_mutex_lock(&e->mu);
    mcs_peer *p = e->peers[id];
    if (p && !p->closing)
        p->refs++;
    else
        p = NULL;
    pthread_mutex_unlock(&e->mu);
    return p;
}

static void peer_put(mcs_engine *e, mcs_peer *p) {
    pthread_mutex_lock(&e->mu);
    if (--p->refs == 0 && p->closing) pthread_cond_broadcast(&e->done_cv);
    pthread_mutex_unlock(&e->mu);
}

int mcs_peer_close(mcs_engine *e, int id) {
    if (!e || id < 0 || id >= MCS_MAX_PEERS) return MCS_E_INVALID_PARAMS;
    pthread_mutex_lock(&e->mu);
    mcs_peer *p = e->peers[id];
    if (!p || p->closing) {
        pthread_mutex_unlock(&e->mu);
        return MCS_E_INVALID_PARAMS;
    }
    p->closing = 1;
    while (p->refs > 0) pthread_cond_wait(&e->done_cv, &e->mu);
    e->peers[id] = NULL;
    pthread_mutex_unlock(&e->mu);
    if (!p->local) mcs_tcp_peer_stop(e, p);  /* fails what is queued or in flight */
    mcs_rdma_peer_release(e, p);             /* flushes what was posted */
    mcs_shm_peer_release(e, p);
    peer_free(p);
    return 0;
}

int mcs_peer_transport(mcs_engine *e, int id) {
    mcs_peer *p = peer_get(e, id);
    if (!p) return MCS_E_INVALID_PARAMS;
    int t = p->local ? MCS_TP_LOCAL
            : (p->shm_sock >= 0 || p->nmaps > 0) ? MCS_TP_SHM
            : p->rdma_qp ? MCS_TP_RDMA : MCS_TP_TCP;
    peer_put(e, p);
    return t;
}

int mcs_shm_attach(mcs_engine *e, int id, int fd, uint64_t len, uint64_t remote_base) {
    mcs_peer *p = peer_get(e, id);
    if (!p) return MCS_E_INVALID_PARAMS;
    int rc = MCS_E_INVALID_PARAMS;
    mcs_shm_map_t m;
    if (!p->local && len > 0 && remote_base + len > remote_base &&
        mcs_shm_map_at(fd, len, 0, 1, &m) == 0) {
        m.remote_base = remote_base;
        pthread_rwlock_wrlock(&p->shm_lock);
        if (p->nmaps < MCS_MAX_SHM_MAPS) {
            p->maps[p->nmaps++] = m;
            atomic_fetch_add(&e->shm_mappings, 1);
            rc = 0;
        } else {
            munmap(m.map_addr, m.map_len);
        }
        pthread_rwlock_unlock(&p->shm_lock);
    }
    peer_put(e, p);
    return rc;
}

/* --------------------------------------------------------------- batches */

static int64_t batch_install(mcs_engine *e, mcs_batch *b) {
    /* Caller holds e->mu. Ids carry a generation so a stale id never finds a
     * newer batch in the same slot. */
    int slot = -1;
    for (int i = 0; i < e->nbatch_slots; i++)
        if (!e->batches[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        int cap = e->nbatch_slots ? 2 * e->nbatch_slots : 64;
        if (cap > (1 << 24)) return MCS_E_INTERNAL;
        mcs_batch **nb = realloc(e->batches, (size_t)cap * sizeof *nb);
        if (!nb) return MCS_E_INTERNAL;
        for (int i = e->nbatch_slots; i < cap; i++) nb[i] = NULL;
        slot = e->nbatch_slots;
        e->batches = nb;
        e->nbatch_slots = cap;
    }
    e->batch_gen = (e->batch_gen + 1) & 0x7fffff;
    b->id = ((int64_t)(e->batch_gen + 1) << 24) | (int64_t)slot;
    e->batches[slot] = b;
    return b->id;
}

static mcs_batch *batch_find(mcs_engine *e, int64_t id) {
    if (id <= 0) return NULL;
    int64_t slot = id & 0xffffff;
    if (slot >= e->nbatch_slots) return NULL;
    mcs_batch *b = e->batches[slot];
    return (b && b->id == id) ? b : NULL;
}

static void finish_request(mcs_engine *e, mcs_batch *b, uint32_t i) {
    mcs_req_status *st = &b->st[i];
    st->state = st->code == 0 ? MCS_ST_COMPLETED
                : st->code == MCS_E_TIMEOUT ? MCS_ST_TIMEOUT : MCS_ST_FAILED;
    if (--b->pending == 0) pthread_cond_broadcast(&e->done_cv);
}

/* A record read whose bytes are all in: its header names this key, this
 * header length and value length, and the value's CRC (combined from its
 * slices' CRCs, each taken as the bytes arrived) is the header's. */
static int rec_verify(mcs_batch *b, uint32_t i) {
    const mcs_rec_job *j = &b->rec[i];
    mcs_rec_info info;
    if (mcs_rec_check_split(j->hdr, j->hdr_len, j->value_len, j->key, j->key_len, &info) != 0)
        return MCS_E_CHECKSUM;
    uint32_t crc = 0;
    uint64_t seen = 0;
    for (int k = j->first_slice; k < j->first_slice + j->nslices; k++) {
        const mcs_slice *s = &b->slices[k];
        uint64_t vl = s->len - s->hdr_len;
        if (vl == 0) continue;
        /* A transport that did not checksum on arrival (rdma): do it now. */
        uint32_t c = s->crc_done ? s->crc : mcs_crc32c(0, (const void *)(uintptr_t)s->local, vl);
        crc = seen ? mcs_crc32c_combine(crc, c, vl) : c;
        seen += vl;
    }
    return seen == j->value_len && crc == info.value_crc ? 0 : MCS_E_CHECKSUM;
}

/* ---- record writes ---- */

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The header of record.h / codec.py for job j (record.c's writer computes the
 * CRC from the value it copies; here the sender computed it): magic, version,
 * codec, flags, key length, header length, value CRC, value length, raw length,
 * epoch, header CRC (over the header with that field zero), key, zero pad.
 * tests/transfer/test_record_writes.py checks it against mcs_rec_write. */
void mcs_recw_encode(const mcs_rec_job *j, uint32_t value_crc) {
    uint8_t *h = j->hdr;
    memset(h, 0, j->hdr_len);
    memcpy(h, "MCS1", 4);
    h[4] = 1;
    h[5] = j->codec;
    h[6] = j->flags;
    put_le(h + 8, j->key_len, 2);
    put_le(h + 10, j->hdr_len, 2);
    put_le(h + 12, value_crc, 4);
    put_le(h + 16, j->value_len, 8);
    put_le(h + 24, j->raw_len ? j->raw_len : j->value_len, 8);
    put_le(h + 32, j->epoch, 8);
    memcpy(h + MCS_REC_FIXED, j->key, j->key_len);
    put_le(h + 40, mcs_crc32c(0, h, j->hdr_len), 4);
}

/* The value's CRC, combined from its slices' CRCs (each taken by the thread
 * that sent the slice, as it sent it). Called when every value slice is sent:
 * by the sender of the header, which is the only thread touching the job. */
void mcs_recw_seal(mcs_slice *h) {
    mcs_batch *b = h->batch;
    const mcs_rec_job *j = &b->rec[h->req];
    uint32_t crc = 0;
    uint64_t seen = 0;
    for (int k = j->first_slice; k < j->first_slice + j->nslices; k++) {
        const mcs_slice *s = &b->slices[k];
        uint32_t c = s->crc_done ? s->crc : mcs_crc32c(0, (const void *)(uintptr_t)s->local, s->len);
        crc = seen ? mcs_crc32c_combine(crc, c, s->len) : c;
        seen += s->len;
    }
    mcs_recw_encode(j, crc);
}

int mcs_recw_gate(mcs_engine *e, mcs_slice *h) {
    mcs_batch *b = h->batch;
    mcs_rec_job *j = &b->rec[h->req];
    pthread_mutex_lock(&e->mu);
    if (j->vals_pending > 0) {
        j->hdr_held = 1;   /* the last value slice to finish queues it (mcs_slice_done) */
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    int code = b->st[h->req].code;
    pthread_mutex_unlock(&e->mu);
    if (code) {
        mcs_slice_done(e, h, code, 0);   /* no header over a value that did not land */
        return 0;
    }
    return 1;
}

void mcs_slice_done(mcs_engine *e, mcs_slice *s, int code, uint64_t bytes) {
    mcs_slice *release = NULL;   /* a held record header whose value is now in */
    int release_code = 0;
    pthread_mutex_lock(&e->mu);
    mcs_batch *b = s->batch;
    mcs_req_status *st = &b->st[s->req];
    st->bytes += bytes;
    if (code && st->code == 0) st->code = code;
    if (b->rec_write && !s->rec_hdr) {
        mcs_rec_job *j = &b->rec[s->req];
        if (--j->vals_pending == 0 && j->hdr_held) {
            j->hdr_held = 0;
            release = &b->slices[j->first_slice + j->nslices];
            release_code = st->code;
        }
    }
    if (--b->slices_left[s->req] == 0) {
        if (b->rec && !b->rec_write && st->code == 0) {
            /* Verified outside the lock: this slice still counts in live_slices,
             * so the batch stays, and no other thread touches this request. */
            pthread_mutex_unlock(&e->mu);
            int v = rec_verify(b, s->req);
            pthread_mutex_lock(&e->mu);
            st->code = v;
            st->bytes = v ? 0 : b->rec[s->req].value_len;
        }
        finish_request(e, b, s->req);
    }
    /* A released header still counts in live_slices: the batch outlives this. */
    mcs_peer *p = b->peer;
    if (--b->live_slices == 0 && b->freed) batch_release(b);
    pthread_mutex_unlock(&e->mu);
    if (release && release_code)
        mcs_slice_done(e, release, release_code, 0);
    else if (release)
        mcs_tcp_push(p, release);
}

static int check_request(const mcs_request *r) {
    if (r->opcode != MCS_OP_READ && r->opcode != MCS_OP_WRITE) return MCS_E_INVALID_PARAMS;
    if (r->length == 0 || r->local == 0 || r->remote == 0) return MCS_E_INVALID_PARAMS;
    if (r->local + r->length < r->local || r->remote + r->length < r->remote)
        return MCS_E_INVALID_PARAMS;
    return 0;
}

static mcs_batch *batch_new(int n) {
    mcs_batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->n = n;
    b->st = calloc((size_t)n, sizeof *b->st);
    b->slices_left = calloc((size_t)n, sizeof *b->slices_left);
    if (!b->st || !b->slices_left) {
        batch_release(b);
        return NULL;
    }
    return b;
}

/* Slices of request r (wire bytes [0, length)): slice_bytes each; a record's
 * short tail (<= 1/16 slice, e.g. the header's worth past 1 MiB) rides with the
 * slice before it instead of costing a request of its own. */
static uint64_t slice_count(const mcs_request *r, uint64_t slice, int rec) {
    uint64_t k = (r->length + slice - 1) / slice;
    if (rec && k > 1 && r->length - (k - 1) * slice <= slice / 16 &&
        slice + slice / 16 <= MCS_MAX_SLICE)
        k--;
    return k;
}

/* Fill slice s of request i covering wire bytes [off, off + len). */
static void slice_fill(mcs_batch *b, mcs_slice *s, int i, const mcs_request *r, uint64_t off,
                       uint64_t len) {
    s->batch = b;
    s->req = (uint32_t)i;
    s->op = r->opcode;
    s->remote = r->remote + off;
    s->len = len;
    if (!b->rec) {
        s->local = r->local + off;
        return;
    }
    /* A record: wire bytes [0, hdr_len) are the header, the rest the value. */
    const mcs_rec_job *j = &b->rec[i];
    s->crc_on = 1;
    if (off < j->hdr_len) {
        s->hdr_len = (uint32_t)(j->hdr_len - off < len ? j->hdr_len - off : len);
        s->hdr_local = (uint64_t)(uintptr_t)(j->hdr + off);
        s->local = r->local;
    } else {
        s->local = r->local + (off - j->hdr_len);
    }
}

/* A record write's slices: its value cut into slice_bytes pieces, then its header. */
static uint64_t recw_slice_count(const mcs_rec_job *j, uint64_t slice) {
    return (j->value_len + slice - 1) / slice + 1;
}

/* Fill record write i's slices from index k: value slices (checksummed as they
 * are sent), then the header slice (sent once they are in). Returns the next index. */
static int recw_fill(mcs_batch *b, int k, int i, uint64_t slice) {
    mcs_rec_job *j = &b->rec[i];
    j->nslices = 0;
    for (uint64_t off = 0; off < j->value_len; off += slice) {
        mcs_slice *s = &b->slices[k++];
        s->batch = b;
        s->req = (uint32_t)i;
        s->op = MCS_OP_WRITE;
        s->local = j->value + off;
        s->remote = j->remote + j->hdr_len + off;
        s->len = j->value_len - off < slice ? j->value_len - off : slice;
        s->crc_on = 1;
        j->nslices++;
    }
    j->vals_pending = j->nslices;
    mcs_slice *h = &b->slices[k++];
    h->batch = b;
    h->req = (uint32_t)i;
    h->op = MCS_OP_WRITE;
    h->local = (uint64_t)(uintptr_t)j->hdr;
    h->remote = j->remote;
    h->len = j->hdr_len;
    h->rec_hdr = 1;
    return k;
}

/* Copy what shm/local reach right here, cut the rest into slices and hand them
 * to rdma or tcp. Takes ownership of b (and of the peer reference). */
static int64_t batch_run(mcs_engine *e, mcs_peer *p, mcs_batch *b, const mcs_request *reqs, int n,
                         int flags) {
    /* Same-host and local requests are copied right here, in the caller's
     * thread (the GIL is released): a hand-off to another thread costs more
     * than a 64 KiB memcpy. The rest is cut into slices for the tcp streams. */
    if (!p->local && p->shm_sock >= 0 && !mcs_shm_peer_alive(p)) mcs_shm_peer_release(e, p);
    uint64_t slice = e->opts.slice_bytes;
    int nslices = 0;
    for (int i = 0; i < n; i++) {
        int code = 0;
        mcs_rec_split split = {0};
        if (b->rec) split = (mcs_rec_split){.hdr = (uint64_t)(uintptr_t)b->rec[i].hdr,
                                            .hdr_len = b->rec[i].hdr_len,
                                            .wr = b->rec_write ? &b->rec[i] : NULL};
        if (mcs_shm_try_copy(e, p, &reqs[i], b->rec ? &split : NULL, &code)) {
            if (code == 0 && b->rec && !b->rec_write) {
                mcs_rec_info info;
                const mcs_rec_job *j = &b->rec[i];
                if (mcs_rec_check_split(j->hdr, j->hdr_len, j->value_len, j->key, j->key_len,
                                        &info) != 0 || info.value_crc != split.crc)
                    code = MCS_E_CHECKSUM;
            }
            b->st[i].code = code;
            b->st[i].bytes = code ? 0 : b->rec ? b->rec[i].value_len : reqs[i].length;
            b->st[i].state = code ? MCS_ST_FAILED : MCS_ST_COMPLETED;
        } else {
            uint64_t k = b->rec_write ? recw_slice_count(&b->rec[i], slice)
                                      : slice_count(&reqs[i], slice, b->rec != NULL);
            b->slices_left[i] = (int)k;
            nslices += (int)k;
            b->pending++;
        }
    }
    if (nslices > 0) {
        b->slices = calloc((size_t)nslices, sizeof *b->slices);
        if (!b->slices) {
            batch_release(b);
            peer_put(e, p);
            return MCS_E_INTERNAL;
        }
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (b->rec) b->rec[i].first_slice = k;
            int left = b->slices_left[i];
            if (b->rec_write && left > 0) {
                k = recw_fill(b, k, i, slice);
                continue;
            }
            for (uint64_t off = 0; left > 0; off += slice, left--) {
                uint64_t len = left == 1 ? reqs[i].length - off : slice;
                slice_fill(b, &b->slices[k++], i, &reqs[i], off, len);
            }
            if (b->rec) b->rec[i].nslices = k - b->rec[i].first_slice;
        }
        b->nslices = nslices;
        b->live_slices = nslices;
    }
    pthread_mutex_lock(&e->mu);
    int64_t bid = batch_install(e, b);
    pthread_mutex_unlock(&e->mu);
    if (bid < 0) {
        batch_release(b);
        peer_put(e, p);
        return bid;
    }
    /* Slices go over rdma when both ends are registered there (not record
     * reads: their payload is split), else to tcp. Relink the tcp ones first:
     * a posted slice may complete at once. */
    mcs_slice *head = NULL, *tail = NULL;
    for (int k = 0; k < nslices; k++) {
        mcs_slice *s = &b->slices[k];
        s->next = NULL;
        if (p->rdma_qp && !b->rec && mcs_rdma_try_post(e, p, s)) continue;
        if (tail)
            tail->next = s;
        else
            head = s;
        tail = s;
    }
    if (head) mcs_tcp_enqueue(p, head, tail, flags);
    peer_put(e, p);
    return bid;
}

int64_t mcs_batch_submit(mcs_engine *e, int id, const mcs_request *reqs, int n, int flags) {
    if (!e || !reqs || n <= 0 || n > (1 << 20) || (flags & ~MCS_SUBMIT_NO_INLINE))
        return MCS_E_INVALID_PARAMS;
    for (int i = 0; i < n; i++)
        if (check_request(&reqs[i])) return MCS_E_INVALID_PARAMS;
    mcs_peer *p = peer_get(e, id);
    if (!p) return MCS_E_INVALID_PARAMS;
    mcs_batch *b = batch_new(n);
    if (!b) {
        peer_put(e, p);
        return MCS_E_INTERNAL;
    }
    return batch_run(e, p, b, reqs, n, flags);
}

/* A batch of n record jobs with their header and key room (mem bytes) in one
 * block, and n requests for the caller to fill; NULL when memory ran out. */
static mcs_batch *rec_batch_new(int n, size_t mem, mcs_request **reqs) {
    *reqs = malloc((size_t)n * sizeof **reqs);
    mcs_batch *b = *reqs ? batch_new(n) : NULL;
    if (b) {
        b->rec = calloc((size_t)n, sizeof *b->rec);
        b->rec_mem = malloc(mem);
    }
    if (!b || !b->rec || !b->rec_mem) {
        if (b) batch_release(b);
        free(*reqs);
        *reqs = NULL;
        return NULL;
    }
    return b;
}

/* Points job j at its header room and a copy of its key, both at `at`; returns
 * the next free byte of the batch's block. */
static uint8_t *rec_job_init(mcs_rec_job *j, uint8_t *at, const char *key, uint32_t key_len,
                             uint64_t value, uint64_t value_len) {
    j->hdr_len = (uint32_t)mcs_rec_header_size(key_len);
    j->hdr = at;
    at += j->hdr_len;
    memcpy(at, key, key_len);
    j->key = (const char *)at;
    j->key_len = key_len;
    j->value = value;
    j->value_len = value_len;
    return at + key_len;
}

/* The caller's numbers of one record read or write: a key of 1..MCS_REC_MAX_KEY
 * bytes, a non-empty value that does not wrap, a remote address. */
static int rec_args_ok(const char *key, uint32_t key_len, uint64_t value, uint64_t value_len,
                       uint64_t remote) {
    return key && key_len > 0 && key_len <= MCS_REC_MAX_KEY && value != 0 && value_len > 0 &&
           remote != 0 && value_len <= UINT64_MAX - 2 * MCS_REC_MAX_KEY &&
           value + value_len >= value;
}

int64_t mcs_batch_submit_rec(mcs_engine *e, int id, const mcs_rec_request *rr, int n, int flags) {
    if (!e || !rr || n <= 0 || n > (1 << 20) || (flags & ~MCS_SUBMIT_NO_INLINE))
        return MCS_E_INVALID_PARAMS;
    size_t mem = 0;
    for (int i = 0; i < n; i++) {
        if (!rec_args_ok(rr[i].key, rr[i].key_len, rr[i].value, rr[i].value_len, rr[i].remote))
            return MCS_E_INVALID_PARAMS;
        mem += mcs_rec_header_size(rr[i].key_len) + rr[i].key_len;
    }
    mcs_request *reqs;
    mcs_batch *b = rec_batch_new(n, mem, &reqs);
    if (!b) return MCS_E_INTERNAL;
    uint8_t *at = b->rec_mem;
    for (int i = 0; i < n; i++) {
        mcs_rec_job *j = &b->rec[i];
        at = rec_job_init(j, at, rr[i].key, rr[i].key_len, rr[i].value, rr[i].value_len);
        reqs[i] = (mcs_request){.opcode = MCS_OP_READ, .local = rr[i].value,
                                .remote = rr[i].remote, .length = j->hdr_len + rr[i].value_len};
        if (check_request(&reqs[i])) {
            batch_release(b);
            free(reqs);
            return MCS_E_INVALID_PARAMS;
        }
    }
    mcs_peer *p = peer_get(e, id);
    int64_t rc = p ? batch_run(e, p, b, reqs, n, flags) : MCS_E_INVALID_PARAMS;
    if (!p) batch_release(b);
    free(reqs);
    return rc;
}

int64_t mcs_batch_submit_recw(mcs_engine *e, int id, const mcs_recw_request *rr, int n,
                              int flags) {
    if (!e || !rr || n <= 0 || n > (1 << 20) || (flags & ~MCS_SUBMIT_NO_INLINE))
        return MCS_E_INVALID_PARAMS;
    size_t mem = 0;
    for (int i = 0; i < n; i++) {
        /* Every range check here is on our own numbers; the peer checks its range. */
        if (!rec_args_ok(rr[i].key, rr[i].key_len, rr[i].value, rr[i].value_len, rr[i].remote) ||
            rr[i].remote + mcs_rec_header_size(rr[i].key_len) + rr[i].value_len < rr[i].remote)
            return MCS_E_INVALID_PARAMS;
        mem += mcs_rec_header_size(rr[i].key_len) + rr[i].key_len;
    }
    mcs_request *reqs;
    mcs_batch *b = rec_batch_new(n, mem, &reqs);
    if (!b) return MCS_E_INTERNAL;
    b->rec_write = 1;
    uint8_t *at = b->rec_mem;
    for (int i = 0; i < n; i++) {
        mcs_rec_job *j = &b->rec[i];
        at = rec_job_init(j, at, rr[i].key, rr[i].key_len, rr[i].value, rr[i].value_len);
        j->remote = rr[i].remote;
        j->epoch = rr[i].epoch;
        j->raw_len = rr[i].raw_len;
        j->codec = rr[i].codec;
        j->flags = rr[i].flags;
        /* Whole record, for the shm/local copy (header apart, written last). */
        reqs[i] = (mcs_request){.opcode = MCS_OP_WRITE, .local = rr[i].value,
                                .remote = rr[i].remote, .length = j->hdr_len + rr[i].value_len};
    }
    mcs_peer *p = peer_get(e, id);
    if (p) b->peer = p;
    int64_t rc = p ? batch_run(e, p, b, reqs, n, flags) : MCS_E_INVALID_PARAMS;
    if (!p) batch_release(b);
    free(reqs);
    return rc;
}

int mcs_batch_wait(mcs_engine *e, int64_t id, int timeout_ms) {
    if (!e) return MCS_E_INVALID_PARAMS;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (timeout_ms > 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&e->mu);
    int rc;
    for (;;) {
        mcs_batch *b = batch_find(e, id);
        if (!b) {
            rc = MCS_E_INVALID_PARAMS;
            break;
        }
        if (b->pending == 0) {
            rc = 0;
            break;
        }
        if (timeout_ms == 0) {
            rc = MCS_E_TIMEOUT;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&e->done_cv, &e->mu);
        } else if (pthread_cond_timedwait(&e->done_cv, &e->mu, &dl) == ETIMEDOUT) {
            b = batch_find(e, id);
            rc = !b ? MCS_E_INVALID_PARAMS : b->pending == 0 ? 0 : MCS_E_TIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int mcs_batch_status(mcs_engine *e, int64_t id, mcs_req_status *out, int n) {
    if (!e || !out) return MCS_E_INVALID_PARAMS;
    pthread_mutex_lock(&e->mu);
    mcs_batch *b = batch_find(e, id);
    int rc = MCS_E_INVALID_PARAMS;
    if (b && n == b->n) {
        memcpy(out, b->st, (size_t)n * sizeof *out);
        rc = b->pending;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int mcs_batch_free(mcs_engine *e, int64_t id) {
    if (!e) return MCS_E_INVALID_PARAMS;
    pthread_mutex_lock(&e->mu);
    mcs_batch *b = batch_find(e, id);
    if (!b) {
        pthread_mutex_unlock(&e->mu);
        return MCS_E_INVALID_PARAMS;
    }
    e->batches[id & 0xffffff] = NULL;
    if (b->live_slices == 0)
        batch_release(b);
    else
        b->freed = 1;  /* the last slice to finish releases it */
    pthread_mutex_unlock(&e->mu);
    return 0;
}
