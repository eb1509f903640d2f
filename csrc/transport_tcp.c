/* TCP transport.
 *
 * Server: one acceptor thread blocks in poll() on the listening sockets (tcp
 * and the abstract unix socket of the shm transport) and a wake pipe; each
 * accepted connection gets a thread that serves requests in order: WRITE
 * payloads are received straight into registered memory, READ payloads are
 * sent straight from it with one sendmsg. Every header is validated and
 * bounds-checked before memory is touched; a bad one is answered with an error
 * code, counted, and the connection is closed (others are unaffected).
 *
 * Client: a peer has `streams` connections, each driven by one thread that
 * keeps up to `window` requests in flight (pipelining) and takes slices from a
 * queue shared by the peer's streams, so large requests spread across streams.
 * Idle threads sleep on a condition variable or in poll(): no busy polling.
 * A batch of a few slices, 2 MiB at most, skips them: the submitting thread
 * sends them (back to back) and reads the answers itself on the peer's inline
 * connection (two thread hand-offs fewer: most of a 4 KiB round trip, ~half of
 * a 1 MiB one). Record reads (mcs_batch_submit_rec) are checksummed by
 * whichever thread receives their bytes, as the bytes arrive; record writes
 * (mcs_batch_submit_recw) by whichever thread sends them, as they go out, and
 * their header follows the value: on one connection right behind it (the
 * server runs a connection's requests in order and stops at the first that
 * fails), on the streams once the value's requests were answered. */
#include "transport_tcp.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "checksum.h"
#include "engine_int.h"

/* ================================================================ server */

static void send_error(int fd, const mcs_wire_hdr *req, int code) {
    mcs_wire_hdr r = {.magic = MCS_WIRE_MAGIC, .version = MCS_WIRE_VERSION,
                      .opcode = (uint16_t)((req->opcode & 0x7f) | MCS_WOP_RESP),
                      .status = code, .req_id = req->req_id, .addr = req->addr};
    mcs_write_full(fd, &r, sizeof r);  /* best effort: the connection closes next */
}

/* Per-connection server state. Responses to WRITE and PING are held back
 * while more requests are already waiting to be read, and go out together
 * (with the next READ's data, or when the input runs dry): one send instead of
 * one per request. The client's window bounds how many can pile up. */
#define MCS_RESP_BATCH 64
typedef struct {
    mcs_conn *c;
    mcs_wire_hdr pend[MCS_RESP_BATCH];
    int npend;
} serve_state;

static int flush_responses(serve_state *st) {
    if (st->npend == 0) return 0;
    int rc = mcs_write_full(st->c->fd, st->pend, (size_t)st->npend * sizeof(mcs_wire_hdr));
    st->npend = 0;
    return rc;
}

/* How long a thread that expects bytes any moment polls without sleeping:
 * waking a sleeping (v)CPU costs 20-40 us per hop on an idle VM, more than a
 * small request. Bounded, so an idle connection costs nothing. */
#define MCS_SPIN_NS 60000ull

/* Up to n bytes without blocking, retried for MCS_SPIN_NS: bytes read (0 when
 * none came), or -1 when the peer closed or the socket failed. Each retry
 * yields the CPU first: the thread that will send the bytes (the peer, or a
 * third party it waits for) may be runnable on this very core, and spinners
 * that do not yield keep it off for their whole window. */
static ssize_t recv_spin(int fd, void *buf, size_t n) {
    uint64_t until = mcs_now_ns() + MCS_SPIN_NS;
    for (;;) {
        ssize_t r = recv(fd, buf, n, MSG_DONTWAIT);
        if (r > 0) return r;
        if (r == 0) return -1;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
        if (mcs_now_ns() >= until) return 0;
        sched_yield();
    }
}

/* Next request header: taken at once when it is there, else after flushing
 * the held responses, a short spin, and sleeping in poll() (idle costs
 * nothing; the socket timeout then bounds a request that stalls half way).
 * 0 or nonzero = close. */
static int next_header(serve_state *st, uint8_t raw[MCS_WIRE_HDR]) {
    int fd = st->c->fd;
    ssize_t r = recv(fd, raw, MCS_WIRE_HDR, MSG_DONTWAIT);
    if (r == MCS_WIRE_HDR) return 0;
    if (r == 0) return 1;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    size_t got = r > 0 ? (size_t)r : 0;
    if (flush_responses(st)) return 1;
    if (got == 0) {
        r = recv_spin(fd, raw, MCS_WIRE_HDR);
        if (r < 0) return 1;
        got = (size_t)r;
    }
    while (got == 0) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int pr = poll(&pf, 1, -1);
        if (pr > 0) break;
        if (pr < 0 && errno != EINTR) return 1;
    }
    return mcs_read_full(fd, raw + got, MCS_WIRE_HDR - got) != 0;
}

static int hold_response(serve_state *st, const mcs_wire_hdr *resp) {
    st->pend[st->npend++] = *resp;
    return st->npend == MCS_RESP_BATCH ? flush_responses(st) : 0;
}

/* Serve one request; 0 to keep the connection, nonzero to close it. */
static int serve_one(mcs_engine *e, serve_state *st) {
    mcs_conn *c = st->c;
    int fd = c->fd;
    uint8_t raw[MCS_WIRE_HDR];
    if (next_header(st, raw)) return 1;
    mcs_wire_hdr h;
    mcs_wire_decode(&h, raw);
    int rc = mcs_wire_validate(e, &h);
    if (rc == 0 && (h.opcode == MCS_WOP_READ || h.opcode == MCS_WOP_WRITE))
        rc = mcs_region_acquire(e, h.addr, h.length);
    if (rc) {
        atomic_fetch_add(&e->bad_requests, 1);
        if (flush_responses(st) == 0) send_error(fd, &h, rc);  /* after the earlier answers */
        return 1;
    }
    mcs_wire_hdr resp = {.magic = MCS_WIRE_MAGIC, .version = MCS_WIRE_VERSION,
                         .opcode = (uint16_t)(h.opcode | MCS_WOP_RESP), .req_id = h.req_id,
                         .addr = h.addr};
    if (h.opcode == MCS_WOP_PING) return hold_response(st, &resp) != 0;
    if (h.opcode == MCS_WOP_RDMA) return flush_responses(st) || mcs_rdma_serve_connect(e, c, &h) != 0;
    void *mem = (void *)(uintptr_t)h.addr;
    int io;
    if (h.opcode == MCS_WOP_WRITE) {
        io = mcs_read_full(fd, mem, h.length);
        mcs_region_release(e, h.addr);
        if (io == 0) io = hold_response(st, &resp);
    } else {
        resp.length = h.length;
        struct iovec iov[3] = {{st->pend, (size_t)st->npend * sizeof(mcs_wire_hdr)},
                               {&resp, sizeof resp}, {mem, h.length}};
        io = st->npend ? mcs_writev_full(fd, iov, 3) : mcs_writev_full(fd, iov + 1, 2);
        st->npend = 0;
        mcs_region_release(e, h.addr);
    }
    if (io) return 1;
    atomic_fetch_add(&e->requests_served, 1);
    atomic_fetch_add(&e->bytes_served, h.length);
    return 0;
}

static void *conn_main(void *arg) {
    mcs_conn *c = arg;
    mcs_engine *e = c->e;
    mcs_sock_tune(e, c->fd, !c->is_unix);
    if (mcs_hs_server(e, c->fd) == 0) {
        if (c->is_unix) {
            mcs_shm_serve_conn(e, c->fd);
        } else {
            serve_state *st = calloc(1, sizeof *st);
            if (st) {
                st->c = c;
                while (serve_one(e, st) == 0) {}
                free(st);
            }
        }
    }
    /* Hang up now so the peer sees it at once; the fd itself is closed by the
     * joiner (closing here could let a new socket reuse the number). */
    shutdown(c->fd, SHUT_RDWR);
    mcs_rdma_conn_release(e, c);
    atomic_fetch_sub(&e->conns_active, 1);
    atomic_store(&c->done, 1);
    return NULL;  /* the fd is closed by whoever joins us (no fd-number reuse race) */
}

static void reap(mcs_engine *e, int all) {
    mcs_conn **pp = &e->conns;
    while (*pp) {
        mcs_conn *c = *pp;
        if (all) shutdown(c->fd, SHUT_RDWR);
        if (all || atomic_load(&c->done)) {
            pthread_join(c->th, NULL);
            close(c->fd);
            *pp = c->next;
            free(c);
        } else {
            pp = &c->next;
        }
    }
}

static void start_conn(mcs_engine *e, int lfd, int is_unix) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return;
    mcs_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->e = e;
    c->fd = fd;
    c->is_unix = is_unix;
    atomic_fetch_add(&e->conns_accepted, 1);
    atomic_fetch_add(&e->conns_active, 1);
    if (pthread_create(&c->th, NULL, conn_main, c) != 0) {
        atomic_fetch_sub(&e->conns_active, 1);
        close(fd);
        free(c);
        return;
    }
    c->next = e->conns;
    e->conns = c;
}

static void *acceptor_main(void *arg) {
    mcs_engine *e = arg;
    for (;;) {
        struct pollfd pf[3] = {{.fd = e->wake[0], .events = POLLIN},
                               {.fd = e->listen_fd, .events = POLLIN},
                               {.fd = e->unix_fd, .events = POLLIN}};
        int pr = poll(pf, e->unix_fd >= 0 ? 3 : 2, -1);
        if (pr < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pf[0].revents) break;
        reap(e, 0);
        if (pf[1].revents & POLLIN) start_conn(e, e->listen_fd, 0);
        if (e->unix_fd >= 0 && (pf[2].revents & POLLIN)) start_conn(e, e->unix_fd, 1);
    }
    return NULL;
}

static int open_unix(mcs_engine *e, int port) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    uint64_t tag = mcs_now_ns() ^ (uint64_t)(uintptr_t)e;
    int n = snprintf(e->unix_name, MCS_UNIX_NAME, "mcs.%d.%d.%llx", (int)getpid(), port,
                     (unsigned long long)tag);
    memcpy(a.sun_path + 1, e->unix_name, (size_t)n);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (bind(fd, (struct sockaddr *)&a, alen) < 0 || listen(fd, 64) < 0) {
        close(fd);
        e->unix_name[0] = 0;
        return -1;
    }
    return fd;
}

int mcs_tcp_listen(mcs_engine *e, const char *host, int port, int *bound_port) {
    pthread_mutex_lock(&e->srv_mu);
    if (e->serving) {
        pthread_mutex_unlock(&e->srv_mu);
        return MCS_E_INVALID_PARAMS;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0 || !res) {
        pthread_mutex_unlock(&e->srv_mu);
        return MCS_E_INVALID_PARAMS;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    int rc = MCS_E_RPC_FAIL;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, res->ai_addr, res->ai_addrlen) == 0 && listen(fd, 128) == 0) rc = 0;
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (rc == 0 && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        int bp = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        if (bound_port) *bound_port = bp;
        e->listen_fd = fd;
        e->unix_fd = open_unix(e, bp);
        if (pipe2(e->wake, O_CLOEXEC) != 0 ||
            pthread_create(&e->acceptor, NULL, acceptor_main, e) != 0)
            rc = MCS_E_INTERNAL;
    } else if (rc == 0) {
        rc = MCS_E_INTERNAL;
    }
    if (rc == 0) {
        e->serving = 1;
    } else {
        if (fd >= 0) close(fd);
        if (e->unix_fd >= 0) close(e->unix_fd);
        for (int i = 0; i < 2; i++)
            if (e->wake[i] >= 0) close(e->wake[i]);
        e->listen_fd = e->unix_fd = e->wake[0] = e->wake[1] = -1;
        e->unix_name[0] = 0;
    }
    pthread_mutex_unlock(&e->srv_mu);
    return rc;
}

void mcs_tcp_stop(mcs_engine *e) {
    pthread_mutex_lock(&e->srv_mu);
    if (e->serving) {
        char b = 1;
        while (write(e->wake[1], &b, 1) < 0 && errno == EINTR) {}
        pthread_join(e->acceptor, NULL);
        reap(e, 1);
        close(e->listen_fd);
        if (e->unix_fd >= 0) close(e->unix_fd);
        close(e->wake[0]);
        close(e->wake[1]);
        e->listen_fd = e->unix_fd = e->wake[0] = e->wake[1] = -1;
        e->serving = 0;
    }
    pthread_mutex_unlock(&e->srv_mu);
}

/* ================================================================ client */

int mcs_tcp_connect(mcs_engine *e, const char *host, int port, mcs_hs_hello *hello) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0 || !res) return MCS_E_RPC_FAIL;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return MCS_E_RPC_FAIL;
    }
    mcs_sock_tune(e, fd, 1);  /* SO_SNDTIMEO also bounds connect() on Linux */
    int c;
    do {
        c = connect(fd, res->ai_addr, res->ai_addrlen);
    } while (c < 0 && errno == EINTR);
    freeaddrinfo(res);
    if (c < 0) {
        close(fd);
        return errno == EINPROGRESS || errno == ETIMEDOUT ? MCS_E_TIMEOUT : MCS_E_RPC_FAIL;
    }
    int rc = mcs_hs_client(e, fd, hello);
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

static int sane_code(int32_t st) {
    switch (st) {
    case MCS_E_BUFFER_OVERFLOW:
    case MCS_E_INVALID_PARAMS:
    case MCS_E_TRANSFER_FAIL:
    case MCS_E_TIMEOUT:
        return st;
    default:
        return MCS_E_TRANSFER_FAIL;
    }
}

static void stream_close(mcs_stream *st) {
    mcs_peer *p = st->peer;
    pthread_mutex_lock(&p->mu);
    if (st->fd >= 0) close(st->fd);
    st->fd = -1;
    pthread_mutex_unlock(&p->mu);
}

static mcs_slice *inflight_pop(mcs_stream *st) {
    mcs_slice *s = st->ih;
    st->ih = s->next;
    if (!st->ih) st->it = NULL;
    s->next = NULL;
    st->n_inflight--;
    st->inflight_bytes -= s->len;
    if (s->op == MCS_OP_READ) st->reads_inflight--;
    return s;
}

static void fail_inflight(mcs_stream *st, int code) {
    while (st->ih) mcs_slice_done(st->peer->e, inflight_pop(st), code, 0);
}

/* Put unexecuted in-flight slices back at the head of the peer queue. */
static void requeue_inflight(mcs_stream *st) {
    mcs_peer *p = st->peer;
    if (!st->ih) return;
    mcs_slice *h = st->ih, *t = st->it;
    st->ih = st->it = NULL;
    st->n_inflight = st->reads_inflight = 0;
    st->inflight_bytes = 0;
    pthread_mutex_lock(&p->mu);
    t->next = p->qh;
    p->qh = h;
    if (!p->qt) p->qt = t;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Broken connection: fail what is in flight and close. */
static void stream_broken(mcs_stream *st, int code) {
    fail_inflight(st, code);
    stream_close(st);
}

/* Bytes of a record's value read per recv before checksumming them: small
 * enough to still be in cache when the CRC reads them back. */
#define MCS_CRC_CHUNK (64u << 10)

/* The payload of a READ answer into the slice's memory: a record's header
 * part apart, and its value part checksummed chunk by chunk as it arrives
 * (the CRC then costs a pass over cached bytes, overlapping the transfer). */
static int recv_payload(int fd, mcs_slice *s) {
    if (s->hdr_len) {
        int rc = mcs_read_full(fd, (void *)(uintptr_t)s->hdr_local, s->hdr_len);
        if (rc) return rc;
    }
    uint8_t *at = (uint8_t *)(uintptr_t)s->local;
    uint64_t left = s->len - s->hdr_len;
    if (!s->crc_on) return left ? mcs_read_full(fd, at, left) : 0;
    uint32_t crc = 0;
    while (left > 0) {
        size_t n = left < MCS_CRC_CHUNK ? (size_t)left : MCS_CRC_CHUNK;
        int rc = mcs_read_full(fd, at, n);
        if (rc) return rc;
        crc = mcs_crc32c(crc, at, n);
        at += n;
        left -= n;
    }
    s->crc = crc;
    s->crc_done = 1;
    return 0;
}

/* Receive the response to the oldest in-flight slice. */
static void recv_one(mcs_stream *st) {
    mcs_engine *e = st->peer->e;
    mcs_slice *s = st->ih;
    uint8_t raw[MCS_WIRE_HDR];
    int rc = mcs_read_full(st->fd, raw, sizeof raw);
    if (rc) {
        stream_broken(st, rc);
        return;
    }
    mcs_wire_hdr h;
    mcs_wire_decode(&h, raw);
    int want_op = (s->op == MCS_OP_READ ? MCS_WOP_READ : MCS_WOP_WRITE) | MCS_WOP_RESP;
    if (h.magic != MCS_WIRE_MAGIC || h.version != MCS_WIRE_VERSION || h.opcode != want_op ||
        h.req_id != s->wire_id) {
        stream_broken(st, MCS_E_TRANSFER_FAIL);
        return;
    }
    if (h.status != 0) {
        /* The server refused this request and closes the connection without
         * executing anything sent after it: retry those on a new connection. */
        mcs_slice_done(e, inflight_pop(st), sane_code(h.status), 0);
        requeue_inflight(st);
        stream_close(st);
        return;
    }
    if (s->op == MCS_OP_READ) {
        if (h.length != s->len) {
            stream_broken(st, MCS_E_TRANSFER_FAIL);
            return;
        }
        rc = recv_payload(st->fd, s);
        if (rc) {
            stream_broken(st, rc);
            return;
        }
    } else if (h.length != 0) {
        stream_broken(st, MCS_E_TRANSFER_FAIL);
        return;
    }
    mcs_slice_done(e, inflight_pop(st), 0, s->len);
}

#define MCS_RUN_MAX 32

/* The requests of v[0, n) with their ids, in order, gathered into one writev
 * (headers, and the payloads of writes); a record write's value is checksummed
 * just before, and its header is sealed (with that CRC) behind it. */
static int send_slices(int fd, mcs_slice **v, int n, const uint64_t *ids) {
    mcs_wire_hdr h[MCS_RUN_MAX];
    struct iovec iov[2 * MCS_RUN_MAX];
    int k = 0;
    for (int i = 0; i < n; i++) {
        mcs_slice *s = v[i];
        h[i] = (mcs_wire_hdr){.magic = MCS_WIRE_MAGIC, .version = MCS_WIRE_VERSION,
                              .opcode = s->op == MCS_OP_READ ? MCS_WOP_READ : MCS_WOP_WRITE,
                              .req_id = ids[i], .addr = s->remote, .length = s->len};
        if (s->op == MCS_OP_WRITE && s->crc_on) {
            /* A record write's value slice (at most slice_bytes) is checksummed whole
             * just before the send. Sending it in 256 KiB pieces, each checksummed
             * just before it went out, made 1 MiB record writes 15-35% slower over
             * loopback (docs/PERFORMANCE.md). A failed send fails the slice; a resend
             * redoes the CRC. */
            s->crc = mcs_crc32c(0, (const void *)(uintptr_t)s->local, (size_t)s->len);
            s->crc_done = 1;
        }
        if (s->rec_hdr) mcs_recw_seal(s);   /* its value slices were all sent before it */
        iov[k++] = (struct iovec){&h[i], sizeof h[i]};
        if (s->op == MCS_OP_WRITE) iov[k++] = (struct iovec){(void *)(uintptr_t)s->local, s->len};
    }
    return k ? mcs_writev_full(fd, iov, k) : 0;
}

/* Send a run of same-op slices (one sendmsg); on success they are in flight,
 * in order. */
static int send_run(mcs_stream *st, mcs_slice **run, int n) {
    uint64_t ids[MCS_RUN_MAX];
    for (int i = 0; i < n; i++) ids[i] = run[i]->wire_id = ++st->next_id;
    int rc = send_slices(st->fd, run, n, ids);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        mcs_slice *s = run[i];
        s->next = NULL;
        if (st->it)
            st->it->next = s;
        else
            st->ih = s;
        st->it = s;
        st->n_inflight++;
        st->inflight_bytes += s->len;
        if (s->op == MCS_OP_READ) st->reads_inflight++;
    }
    return 0;
}

static int stream_connect(mcs_stream *st) {
    mcs_peer *p = st->peer;
    pthread_mutex_lock(&p->mu);
    int down = mcs_now_ns() < p->down_until_ns;
    pthread_mutex_unlock(&p->mu);
    if (down) return MCS_E_RPC_FAIL;
    int fd = mcs_tcp_connect(p->e, p->host, p->port, NULL);
    pthread_mutex_lock(&p->mu);
    if (fd < 0) {
        /* Fail fast for a second so a dead peer does not cost one connect
         * attempt per queued slice. */
        p->down_until_ns = mcs_now_ns() + 1000000000ull;
    } else if (p->stop) {
        close(fd);
        fd = MCS_E_TRANSFER_FAIL;
    } else {
        st->fd = fd;
    }
    pthread_mutex_unlock(&p->mu);
    return fd < 0 ? fd : 0;
}

static void *stream_main(void *arg) {
    mcs_stream *st = arg;
    mcs_peer *p = st->peer;
    mcs_engine *e = p->e;
    uint64_t max_bytes = 4 * e->opts.slice_bytes;
    mcs_slice *run[MCS_RUN_MAX];
    for (;;) {
        int n = 0;
        uint64_t bytes = 0;
        pthread_mutex_lock(&p->mu);
        while (!p->stop && st->n_inflight == 0 && !p->qh) pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        /* Take a run of queued slices with the same opcode, within the window. */
        while (p->qh && n < MCS_RUN_MAX && st->n_inflight + n < e->opts.window &&
               st->inflight_bytes + bytes < max_bytes && (n == 0 || p->qh->op == run[0]->op)) {
            mcs_slice *s = p->qh;
            p->qh = s->next;
            if (!p->qh) p->qt = NULL;
            s->next = NULL;
            run[n++] = s;
            bytes += s->len;
        }
        pthread_mutex_unlock(&p->mu);

        if (n == 0) {
            recv_one(st);
            continue;
        }
        /* A write payload must not be pushed while read data is on its way
         * back, or both ends could block in send() on full buffers. */
        while (run[0]->op == MCS_OP_WRITE && st->reads_inflight > 0 && st->fd >= 0) recv_one(st);
        int rc = st->fd < 0 ? stream_connect(st) : 0;
        if (rc == 0) rc = send_run(st, run, n);
        if (rc) {
            for (int i = 0; i < n; i++) mcs_slice_done(e, run[i], rc, 0);
            if (st->fd >= 0) stream_broken(st, rc);
        }
    }
    fail_inflight(st, MCS_E_TRANSFER_FAIL);
    stream_close(st);
    return NULL;
}

int mcs_tcp_peer_start(mcs_engine *e, mcs_peer *p) {
    for (int i = 0; i < p->nstreams; i++) {
        if (pthread_create(&p->streams[i].th, NULL, stream_main, &p->streams[i]) != 0)
            return MCS_E_INTERNAL;
        p->streams[i].started = 1;
    }
    return 0;
}

void mcs_tcp_peer_stop(mcs_engine *e, mcs_peer *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    for (int i = 0; i < p->nstreams; i++)
        if (p->streams[i].fd >= 0) shutdown(p->streams[i].fd, SHUT_RDWR);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nstreams; i++) {
        if (p->streams[i].started) pthread_join(p->streams[i].th, NULL);
        p->streams[i].started = 0;
        if (p->streams[i].fd >= 0) close(p->streams[i].fd);
        p->streams[i].fd = -1;
    }
    if (p->inline_fd1 > 0) close(p->inline_fd1 - 1);   /* no submitter is left (refs 0) */
    p->inline_fd1 = 0;
    /* What was never sent fails now. */
    mcs_slice *s = p->qh;
    p->qh = p->qt = NULL;
    while (s) {
        mcs_slice *n = s->next;
        mcs_slice_done(e, s, MCS_E_TRANSFER_FAIL, 0);
        s = n;
    }
}

/* ---------------------------------------------------------- inline lane */

/* A short chain (a record's header and value, up to 2 MiB) runs in the
 * submitting thread: waking a stream thread and then the waiter costs about
 * as much as moving 1 MiB over loopback. Longer chains go to the streams. */
#define MCS_INLINE_MAX (2u << 20)   /* bytes in one inline chain */
#define MCS_INLINE_RUN 4            /* slices in one inline chain */

enum { INL_DONE, INL_DONE_CLOSE, INL_TIMEOUT, INL_RETRY };

/* The answer to slice s (request `id`) on the inline connection. INL_RETRY:
 * nothing is known to have happened (broken connection; the request is
 * idempotent, so the streams may run it again); the others: s is finished. */
static int inline_answer(mcs_engine *e, int fd, mcs_slice *s, uint64_t id) {
    uint8_t raw[MCS_WIRE_HDR];
    int rc = 0;
    ssize_t got = recv_spin(fd, raw, sizeof raw);   /* the answer is usually microseconds away */
    if (got < 0) rc = MCS_E_TRANSFER_FAIL;
    if (rc == 0 && (size_t)got < sizeof raw) rc = mcs_read_full(fd, raw + got, sizeof raw - (size_t)got);
    if (rc == MCS_E_TIMEOUT) {   /* a stalled peer: report it, do not wait twice */
        mcs_slice_done(e, s, rc, 0);
        return INL_TIMEOUT;
    }
    if (rc) return INL_RETRY;
    mcs_wire_hdr r;
    mcs_wire_decode(&r, raw);
    int want_op = (s->op == MCS_OP_READ ? MCS_WOP_READ : MCS_WOP_WRITE) | MCS_WOP_RESP;
    if (r.magic != MCS_WIRE_MAGIC || r.version != MCS_WIRE_VERSION || r.opcode != want_op ||
        r.req_id != id) {
        mcs_slice_done(e, s, MCS_E_TRANSFER_FAIL, 0);
        return INL_DONE_CLOSE;
    }
    if (r.status != 0) {   /* refused (bad range...): the server closes the connection */
        mcs_slice_done(e, s, sane_code(r.status), 0);
        return INL_DONE_CLOSE;
    }
    if (r.length != (s->op == MCS_OP_READ ? s->len : 0)) {
        mcs_slice_done(e, s, MCS_E_TRANSFER_FAIL, 0);
        return INL_DONE_CLOSE;
    }
    if (s->op == MCS_OP_READ) {
        rc = recv_payload(fd, s);
        if (rc == MCS_E_TIMEOUT) {
            mcs_slice_done(e, s, rc, 0);
            return INL_TIMEOUT;
        }
        if (rc) return INL_RETRY;
    }
    mcs_slice_done(e, s, 0, s->len);
    return INL_DONE;
}

/* Run v[0, n) on the inline connection fd: each run of one opcode is sent
 * with one writev before any answer is read (a record's header and value
 * cost one round trip, not two). Returns how many slices are finished; the
 * rest were not run (the streams take them). *end: INL_DONE (the connection
 * is fine), INL_DONE_CLOSE (it must be closed) or INL_TIMEOUT (the peer
 * stalls: the rest should fail rather than wait again). */
static int inline_runs(mcs_engine *e, int fd, uint64_t *next_id, mcs_slice **v, int n, int *end) {
    uint64_t ids[MCS_INLINE_RUN];
    int i = 0;
    *end = INL_DONE;
    while (i < n) {
        int g = i + 1;
        while (g < n && v[g]->op == v[i]->op) g++;
        for (int k = i; k < g; k++) ids[k] = ++*next_id;
        int rc = send_slices(fd, v + i, g - i, ids + i);
        if (rc) {
            *end = rc == MCS_E_TIMEOUT ? INL_TIMEOUT : INL_DONE_CLOSE;
            return i;
        }
        for (; i < g; i++) {
            int a = inline_answer(e, fd, v[i], ids[i]);
            if (a == INL_DONE) continue;
            *end = a == INL_TIMEOUT ? INL_TIMEOUT : INL_DONE_CLOSE;
            return a == INL_RETRY ? i : i + 1;
        }
    }
    return n;
}

/* Run a short chain in this thread. Returns the slices not run (for the
 * streams), or NULL when every slice is finished. */
static mcs_slice *inline_chain(mcs_peer *p, mcs_slice *head, mcs_slice *tail) {
    mcs_engine *e = p->e;
    mcs_slice *v[MCS_INLINE_RUN];
    int n = 0;
    for (mcs_slice *s = head; n < MCS_INLINE_RUN; s = s->next) {   /* links read before any finishes */
        v[n++] = s;
        if (s == tail) break;
    }
    if (atomic_exchange(&p->inline_busy, 1)) return head;
    int fd = p->inline_fd1 - 1;
    if (fd < 0) {
        pthread_mutex_lock(&p->mu);
        int down = p->stop || mcs_now_ns() < p->down_until_ns;
        pthread_mutex_unlock(&p->mu);
        fd = down ? -1 : mcs_tcp_connect(e, p->host, p->port, NULL);
        p->inline_fd1 = fd >= 0 ? fd + 1 : 0;
    }
    int done = 0, end = INL_DONE;
    if (fd >= 0) {
        done = inline_runs(e, fd, &p->inline_ids, v, n, &end);
        if (end != INL_DONE) {
            close(fd);
            p->inline_fd1 = 0;
        }
    }
    atomic_store(&p->inline_busy, 0);
    if (end == INL_TIMEOUT) {   /* a stalled peer: fail the rest now rather than wait again */
        for (int i = done; i < n; i++) mcs_slice_done(e, v[i], MCS_E_TIMEOUT, 0);
        return NULL;
    }
    return done < n ? v[done] : NULL;
}

/* Slices from head to tail, if few and small enough to run inline. */
static int inline_fits(const mcs_slice *head, const mcs_slice *tail) {
    uint64_t total = 0;
    int n = 0;
    for (const mcs_slice *s = head; s; s = s->next) {
        total += s->len;
        if (++n > MCS_INLINE_RUN || total > MCS_INLINE_MAX) return 0;
        if (s == tail) return 1;
    }
    return 0;
}

void mcs_tcp_push(mcs_peer *p, mcs_slice *s) {
    pthread_mutex_lock(&p->mu);
    s->next = NULL;
    if (p->qt)
        p->qt->next = s;
    else
        p->qh = s;
    p->qt = s;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void mcs_tcp_enqueue(mcs_peer *p, mcs_slice *head, mcs_slice *tail, int flags) {
    if (!(flags & MCS_SUBMIT_NO_INLINE) && inline_fits(head, tail)) {
        head = inline_chain(p, head, tail);
        if (!head) return;   /* all finished; else head..tail go to the streams */
    }
    /* On the streams a record write's header could overtake its value (another
     * stream): it is held back until the value is in (mcs_recw_gate; the last
     * value slice to finish queues it). Links are read before a gate runs: a
     * header it releases may be queued, and relinked, at once. */
    mcs_slice *h = NULL, *t = NULL, *next;
    for (mcs_slice *s = head; s; s = next) {
        next = s == tail ? NULL : s->next;
        if (s->rec_hdr && !mcs_recw_gate(p->e, s)) continue;
        s->next = NULL;
        if (t)
            t->next = s;
        else
            h = s;
        t = s;
    }
    if (!h) return;
    pthread_mutex_lock(&p->mu);
    if (p->qt)
        p->qt->next = h;
    else
        p->qh = h;
    p->qt = t;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}
