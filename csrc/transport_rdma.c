/* RDMA transport: discovery, and a one-sided RC data path (see transport_rdma.h).
 *
 * UNTESTED ON REAL HARDWARE: the machines this was written on have no RDMA
 * device (ibv_get_device_list fails with ENOSYS), so only discovery and the
 * fallback to tcp are exercised by the tests. The data path follows the verbs
 * API as documented; docs/transfer.md says so too.
 *
 * Shape: one protection domain, one completion queue with a completion channel
 * and one completion thread per engine (it sleeps in poll() on the channel fd:
 * no busy polling). Every registered region also gets a memory region (MR).
 * A peer gets one RC queue pair, set up over a tcp connection of the engine's
 * own wire protocol (opcode RDMA_CONNECT carries the QP numbers, GIDs and the
 * owner's rkeys). Requests whose local and remote ranges are both covered by
 * MRs are posted as RDMA READ/WRITE; anything else, or anything that does not
 * fit in the send queue, goes to tcp. */
#include "transport_rdma.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "engine_int.h"

#ifdef MCS_HAVE_RDMA
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#define RDMA_PORT 1
#define RDMA_SQ_DEPTH 512
#define RDMA_MAX_KEYS 64

typedef struct {
    uint64_t base, len;
    struct ibv_mr *mr;
} rdma_mr;

struct mcs_rdma {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    pthread_t th;
    int wake[2];
    pthread_mutex_t mu;          /* the MR table */
    rdma_mr *mrs;
    int nmrs, cap;
    uint16_t lid;
    uint8_t gid[16];
    int gid_index;
    enum ibv_mtu mtu;
};

typedef struct {                 /* one side's endpoint, on the wire */
    uint32_t qpn, psn;
    uint16_t lid;
    uint8_t gid_index, pad;
    uint32_t mtu;
    uint8_t gid[16];
    uint32_t nkeys, pad2;
} rdma_info;

typedef struct {
    uint64_t base, len;
    uint32_t rkey, pad;
} rdma_key;

typedef struct mcs_rdma_qp {
    struct ibv_qp *qp;
    pthread_mutex_t mu;
    int outstanding;             /* posted, not yet completed */
    int dead;
    rdma_key keys[RDMA_MAX_KEYS];
    int nkeys;
    int ctl_fd;                  /* tcp connection that set the QP up (peer side) */
} mcs_rdma_qp;

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

/* --------------------------------------------------------- completions */

static void *cq_main(void *arg) {
    mcs_engine *e = arg;
    struct mcs_rdma *r = e->rdma;
    for (;;) {
        struct pollfd pf[2] = {{.fd = r->wake[0], .events = POLLIN}, {.fd = r->ch->fd, .events = POLLIN}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pf[0].revents) break;
        struct ibv_cq *cq;
        void *cctx;
        if (ibv_get_cq_event(r->ch, &cq, &cctx) != 0) continue;
        ibv_ack_cq_events(cq, 1);
        ibv_req_notify_cq(cq, 0);
        struct ibv_wc wc[32];
        int n;
        while ((n = ibv_poll_cq(cq, 32, wc)) > 0) {
            for (int i = 0; i < n; i++) {
                mcs_slice *s = (mcs_slice *)(uintptr_t)wc[i].wr_id;
                mcs_rdma_qp *q = s->rdma_qp;
                int ok = wc[i].status == IBV_WC_SUCCESS;
                pthread_mutex_lock(&q->mu);
                q->outstanding--;
                if (!ok) q->dead = 1;  /* an RC QP in error state completes nothing else */
                pthread_mutex_unlock(&q->mu);
                mcs_slice_done(e, s, ok ? 0 : MCS_E_TRANSFER_FAIL, ok ? s->len : 0);
            }
        }
    }
    return NULL;
}

int mcs_rdma_enable(mcs_engine *e, const char *device) {
    if (!e) return MCS_E_INVALID_PARAMS;
    if (e->rdma) return 0;
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list) return MCS_E_INVALID_PARAMS;
    struct ibv_device *dev = NULL;
    for (int i = 0; i < n && !dev; i++)
        if (!device || !*device || strcmp(ibv_get_device_name(list[i]), device) == 0) dev = list[i];
    struct mcs_rdma *r = calloc(1, sizeof *r);
    int rc = MCS_E_INVALID_PARAMS;
    if (r && dev && (r->ctx = ibv_open_device(dev))) {
        struct ibv_port_attr pa;
        union ibv_gid gid;
        const char *gi = getenv("MCS_RDMA_GID_INDEX");
        r->gid_index = gi ? atoi(gi) : 0;
        r->wake[0] = r->wake[1] = -1;
        pthread_mutex_init(&r->mu, NULL);
        if (ibv_query_port(r->ctx, RDMA_PORT, &pa) == 0 &&
            ibv_query_gid(r->ctx, RDMA_PORT, r->gid_index, &gid) == 0 &&
            (r->pd = ibv_alloc_pd(r->ctx)) && (r->ch = ibv_create_comp_channel(r->ctx)) &&
            (r->cq = ibv_create_cq(r->ctx, 4096, NULL, r->ch, 0)) && ibv_req_notify_cq(r->cq, 0) == 0 &&
            fcntl(r->ch->fd, F_SETFL, fcntl(r->ch->fd, F_GETFL) | O_NONBLOCK) == 0 &&
            pipe2(r->wake, O_CLOEXEC) == 0) {
            r->lid = pa.lid;
            r->mtu = pa.active_mtu;
            memcpy(r->gid, gid.raw, 16);
            e->rdma = r;
            if (pthread_create(&r->th, NULL, cq_main, e) == 0)
                rc = 0;
            else
                e->rdma = NULL;
        }
    }
    ibv_free_device_list(list);
    if (rc == 0) {
        /* Regions registered before rdma was enabled get their MRs now. */
        pthread_mutex_lock(&e->reg_mu);
        for (int i = 0; i < e->nregions; i++) mcs_rdma_reg(e, e->regions[i].base, e->regions[i].len);
        pthread_mutex_unlock(&e->reg_mu);
        return 0;
    }
    if (r) {
        if (r->cq) ibv_destroy_cq(r->cq);
        if (r->ch) ibv_destroy_comp_channel(r->ch);
        if (r->pd) ibv_dealloc_pd(r->pd);
        if (r->ctx) ibv_close_device(r->ctx);
        for (int i = 0; i < 2; i++)
            if (r->wake[i] >= 0) close(r->wake[i]);
        free(r);
    }
    return rc;
}

void mcs_rdma_close(mcs_engine *e) {
    struct mcs_rdma *r = e->rdma;
    if (!r) return;
    char b = 1;
    while (write(r->wake[1], &b, 1) < 0 && errno == EINTR) {}
    pthread_join(r->th, NULL);
    for (int i = 0; i < r->nmrs; i++) ibv_dereg_mr(r->mrs[i].mr);
    free(r->mrs);
    ibv_destroy_cq(r->cq);
    ibv_destroy_comp_channel(r->ch);
    ibv_dealloc_pd(r->pd);
    ibv_close_device(r->ctx);
    close(r->wake[0]);
    close(r->wake[1]);
    pthread_mutex_destroy(&r->mu);
    free(r);
    e->rdma = NULL;
}

/* -------------------------------------------------------- registration */

void mcs_rdma_reg(mcs_engine *e, uint64_t base, uint64_t len) {
    struct mcs_rdma *r = e->rdma;
    if (!r) return;
    struct ibv_mr *mr = ibv_reg_mr(r->pd, (void *)(uintptr_t)base, len,
                                   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
                                       IBV_ACCESS_REMOTE_WRITE);
    if (!mr) return;  /* tcp still serves this region */
    pthread_mutex_lock(&r->mu);
    if (r->nmrs == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        rdma_mr *m = realloc(r->mrs, (size_t)cap * sizeof *m);
        if (!m) {
            pthread_mutex_unlock(&r->mu);
            ibv_dereg_mr(mr);
            return;
        }
        r->mrs = m;
        r->cap = cap;
    }
    r->mrs[r->nmrs++] = (rdma_mr){base, len, mr};
    pthread_mutex_unlock(&r->mu);
}

void mcs_rdma_dereg(mcs_engine *e, uint64_t base) {
    struct mcs_rdma *r = e->rdma;
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->nmrs; i++) {
        if (r->mrs[i].base == base) {
            ibv_dereg_mr(r->mrs[i].mr);
            r->mrs[i] = r->mrs[--r->nmrs];
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

static uint32_t local_lkey(struct mcs_rdma *r, uint64_t addr, uint64_t len, int *found) {
    uint32_t k = 0;
    *found = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->nmrs; i++) {
        if (addr >= r->mrs[i].base && len <= r->mrs[i].len - (addr - r->mrs[i].base) &&
            addr - r->mrs[i].base < r->mrs[i].len) {
            k = r->mrs[i].mr->lkey;
            *found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return k;
}

static int fill_keys(struct mcs_rdma *r, rdma_key *keys) {
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (int i = 0; i < r->nmrs && n < RDMA_MAX_KEYS; i++)
        keys[n++] = (rdma_key){r->mrs[i].base, r->mrs[i].len, r->mrs[i].mr->rkey, 0};
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ------------------------------------------------------ queue pairs */

static mcs_rdma_qp *qp_new(struct mcs_rdma *r, rdma_info *mine) {
    mcs_rdma_qp *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    struct ibv_qp_init_attr ia = {.send_cq = r->cq, .recv_cq = r->cq, .qp_type = IBV_QPT_RC,
                                  .cap = {.max_send_wr = RDMA_SQ_DEPTH, .max_recv_wr = 1,
                                          .max_send_sge = 1, .max_recv_sge = 1}};
    q->qp = ibv_create_qp(r->pd, &ia);
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = RDMA_PORT,
                            .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
                                               IBV_ACCESS_REMOTE_WRITE};
    if (!q->qp || ibv_modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                               IBV_QP_ACCESS_FLAGS) != 0) {
        if (q->qp) ibv_destroy_qp(q->qp);
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->mu, NULL);
    q->ctl_fd = -1;
    memset(mine, 0, sizeof *mine);
    mine->qpn = q->qp->qp_num;
    mine->psn = (uint32_t)(mcs_now_ns() & 0xffffff);
    mine->lid = r->lid;
    mine->gid_index = (uint8_t)r->gid_index;
    mine->mtu = (uint32_t)r->mtu;
    memcpy(mine->gid, r->gid, 16);
    return q;
}

static int qp_connect(struct mcs_rdma *r, mcs_rdma_qp *q, const rdma_info *mine, const rdma_info *peer) {
    static const uint8_t zero[16];
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR,
                            .path_mtu = (enum ibv_mtu)(peer->mtu < (uint32_t)r->mtu ? peer->mtu : r->mtu),
                            .dest_qp_num = peer->qpn, .rq_psn = peer->psn, .max_dest_rd_atomic = 16,
                            .min_rnr_timer = 12};
    a.ah_attr.dlid = peer->lid;
    a.ah_attr.port_num = RDMA_PORT;
    if (memcmp(peer->gid, zero, 16) != 0) {  /* RoCE / routed IB need the GRH */
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, peer->gid, 16);
        a.ah_attr.grh.sgid_index = (uint8_t)r->gid_index;
        a.ah_attr.grh.hop_limit = 1;
    }
    if (ibv_modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                     IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
        return MCS_E_TRANSFER_FAIL;
    struct ibv_qp_attr b = {.qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7,
                            .sq_psn = mine->psn, .max_rd_atomic = 16};
    if (ibv_modify_qp(q->qp, &b, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                     IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
        return MCS_E_TRANSFER_FAIL;
    return 0;
}

/* Move to the error state, wait for posted work to flush, destroy. */
static void qp_free(mcs_rdma_qp *q) {
    if (!q) return;
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
    ibv_modify_qp(q->qp, &a, IBV_QP_STATE);
    for (int i = 0; i < 30000; i++) {  /* bounded: flushes complete in microseconds */
        pthread_mutex_lock(&q->mu);
        int left = q->outstanding;
        pthread_mutex_unlock(&q->mu);
        if (left == 0) break;
        usleep(1000);
    }
    ibv_destroy_qp(q->qp);
    if (q->ctl_fd >= 0) close(q->ctl_fd);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/* Server: answer an RDMA_CONNECT on connection c. Payload = the peer's rdma_info. */
int mcs_rdma_serve_connect(mcs_engine *e, mcs_conn *c, const mcs_wire_hdr *h) {
    struct mcs_rdma *r = e->rdma;
    rdma_info peer, mine;
    if (h->length != sizeof peer || mcs_read_full(c->fd, &peer, sizeof peer)) return MCS_E_TRANSFER_FAIL;
    mcs_wire_hdr resp = {.magic = MCS_WIRE_MAGIC, .version = MCS_WIRE_VERSION,
                         .opcode = (uint16_t)(MCS_WOP_RDMA | MCS_WOP_RESP), .req_id = h->req_id};
    mcs_rdma_qp *q = (r && !c->rdma_qp) ? qp_new(r, &mine) : NULL;
    if (!q || qp_connect(r, q, &mine, &peer) != 0) {
        if (q) qp_free(q);
        resp.status = MCS_E_INVALID_PARAMS;
        return mcs_write_full(c->fd, &resp, sizeof resp) ? MCS_E_TRANSFER_FAIL : 0;
    }
    c->rdma_qp = q;
    rdma_key keys[RDMA_MAX_KEYS];
    mine.nkeys = (uint32_t)fill_keys(r, keys);
    resp.length = sizeof mine + mine.nkeys * sizeof(rdma_key);
    struct iovec iov[3] = {{&resp, sizeof resp}, {&mine, sizeof mine}, {keys, mine.nkeys * sizeof(rdma_key)}};
    return mcs_writev_full(c->fd, iov, 3) ? MCS_E_TRANSFER_FAIL : 0;
}

void mcs_rdma_conn_release(mcs_engine *e, mcs_conn *c) {
    (void)e;
    qp_free(c->rdma_qp);
    c->rdma_qp = NULL;
}

/* Peer: set up a QP with the owner over a fresh tcp connection of ours. */
int mcs_rdma_peer_connect(mcs_engine *e, mcs_peer *p) {
    struct mcs_rdma *r = e->rdma;
    if (!r) return MCS_E_INVALID_PARAMS;
    rdma_info mine, peer;
    mcs_rdma_qp *q = qp_new(r, &mine);
    if (!q) return MCS_E_TRANSFER_FAIL;
    int fd = mcs_tcp_connect(e, p->host, p->port, NULL);
    if (fd < 0) {
        qp_free(q);
        return fd;
    }
    q->ctl_fd = fd;
    mcs_wire_hdr h = {.magic = MCS_WIRE_MAGIC, .version = MCS_WIRE_VERSION, .opcode = MCS_WOP_RDMA,
                      .req_id = 1, .length = sizeof mine};
    struct iovec iov[2] = {{&h, sizeof h}, {&mine, sizeof mine}};
    mcs_wire_hdr resp;
    int rc = mcs_writev_full(fd, iov, 2);
    if (!rc) rc = mcs_read_full(fd, &resp, sizeof resp);
    if (!rc && (resp.magic != MCS_WIRE_MAGIC || resp.status != 0 ||
                resp.length < sizeof peer || resp.length > sizeof peer + RDMA_MAX_KEYS * sizeof(rdma_key)))
        rc = MCS_E_TRANSFER_FAIL;
    if (!rc) rc = mcs_read_full(fd, &peer, sizeof peer);
    if (!rc && (peer.nkeys > RDMA_MAX_KEYS || resp.length != sizeof peer + peer.nkeys * sizeof(rdma_key)))
        rc = MCS_E_TRANSFER_FAIL;
    if (!rc) rc = mcs_read_full(fd, q->keys, peer.nkeys * sizeof(rdma_key));
    if (!rc) rc = qp_connect(r, q, &mine, &peer);
    if (rc) {
        qp_free(q);
        return rc;
    }
    q->nkeys = (int)peer.nkeys;
    p->rdma_qp = q;
    return 0;
}

void mcs_rdma_peer_release(mcs_engine *e, mcs_peer *p) {
    (void)e;
    qp_free(p->rdma_qp);
    p->rdma_qp = NULL;
}

int mcs_rdma_try_post(mcs_engine *e, mcs_peer *p, mcs_slice *s) {
    struct mcs_rdma *r = e->rdma;
    mcs_rdma_qp *q = p->rdma_qp;
    if (!r || !q) return 0;
    int found;
    uint32_t lkey = local_lkey(r, s->local, s->len, &found);
    if (!found) return 0;
    uint32_t rkey = 0;
    for (int i = 0; i < q->nkeys && !rkey; i++)
        if (s->remote >= q->keys[i].base && s->remote - q->keys[i].base < q->keys[i].len &&
            s->len <= q->keys[i].len - (s->remote - q->keys[i].base))
            rkey = q->keys[i].rkey;
    if (!rkey) return 0;
    pthread_mutex_lock(&q->mu);
    int posted = 0;
    if (!q->dead && q->outstanding < RDMA_SQ_DEPTH) {
        struct ibv_sge sge = {.addr = s->local, .length = (uint32_t)s->len, .lkey = lkey};
        struct ibv_send_wr wr = {.wr_id = (uint64_t)(uintptr_t)s, .sg_list = &sge, .num_sge = 1,
                                 .opcode = s->op == MCS_OP_READ ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE,
                                 .send_flags = IBV_SEND_SIGNALED};
        wr.wr.rdma.remote_addr = s->remote;
        wr.wr.rdma.rkey = rkey;
        struct ibv_send_wr *bad = NULL;
        s->rdma_qp = q;
        if (ibv_post_send(q->qp, &wr, &bad) == 0) {
            q->outstanding++;
            posted = 1;
        }
    }
    pthread_mutex_unlock(&q->mu);
    return posted;
}

#else /* no libibverbs at build time */

int mcs_rdma_compiled(void) { return 0; }

int mcs_rdma_probe(char *msg, int msg_cap) {
    if (msg && msg_cap > 0) snprintf(msg, (size_t)msg_cap, "built without libibverbs");
    return -ENOSYS;
}

int mcs_rdma_enable(mcs_engine *e, const char *device) {
    (void)e;
    (void)device;
    return MCS_E_INVALID_PARAMS;
}
void mcs_rdma_close(mcs_engine *e) { (void)e; }
void mcs_rdma_reg(mcs_engine *e, uint64_t base, uint64_t len) { (void)e; (void)base; (void)len; }
void mcs_rdma_dereg(mcs_engine *e, uint64_t base) { (void)e; (void)base; }
int mcs_rdma_serve_connect(mcs_engine *e, mcs_conn *c, const mcs_wire_hdr *h) {
    (void)e;
    (void)c;
    (void)h;
    return MCS_E_INVALID_PARAMS;
}
void mcs_rdma_conn_release(mcs_engine *e, mcs_conn *c) { (void)e; (void)c; }
int mcs_rdma_peer_connect(mcs_engine *e, mcs_peer *p) {
    (void)e;
    (void)p;
    return MCS_E_INVALID_PARAMS;
}
void mcs_rdma_peer_release(mcs_engine *e, mcs_peer *p) { (void)e; (void)p; }
int mcs_rdma_try_post(mcs_engine *e, mcs_peer *p, mcs_slice *s) {
    (void)e;
    (void)p;
    (void)s;
    return 0;
}
#endif
