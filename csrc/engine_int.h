/* Transfer engine internals shared by the core and the transports (not part of
 * the cffi surface). */
#ifndef MCS_ENGINE_INT_H
#define MCS_ENGINE_INT_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "engine.h"
#include "transport_rdma.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian and is written with host order"
#endif

#define MCS_MAX_STREAMS 16
#define MCS_MAX_PEERS 1024
#define MCS_MAX_SHM_MAPS 64
#define MCS_MAX_SLICE (64ull << 20)   /* longest single wire request */

/* ---- wire format (docs/transfer.md) ---- */
#define MCS_WIRE_MAGIC 0x3153434Du   /* "MCS1" */
#define MCS_WIRE_VERSION 1
#define MCS_WOP_READ 1
#define MCS_WOP_WRITE 2
#define MCS_WOP_PING 3
#define MCS_WOP_RDMA 4               /* set up an RDMA queue pair (payload: endpoint info) */
#define MCS_WOP_RESP 0x80            /* or'ed into the opcode of a response */
#define MCS_WIRE_HDR 40

typedef struct {
    uint32_t magic;
    uint16_t version;
    uint16_t opcode;
    int32_t status;     /* responses: 0 or an MCS_E* code */
    uint32_t reserved;  /* must be 0 */
    uint64_t req_id;
    uint64_t addr;      /* address in the server's registered memory */
    uint64_t length;    /* payload bytes (WRITE request, READ response) */
} mcs_wire_hdr;
_Static_assert(sizeof(mcs_wire_hdr) == MCS_WIRE_HDR, "wire header is 40 bytes");

/* ---- handshake (auth.c builds and checks the MACs) ---- */
#define MCS_HS_MAGIC 0x4853434Du     /* "MCSH" */
#define MCS_NONCE 32
#define MCS_MAC 32
#define MCS_HS_AUTH 1                /* flag: side holds a secret */
#define MCS_UNIX_NAME 64

typedef struct {             /* server -> client */
    uint32_t magic;
    uint16_t version;
    uint16_t flags;
    uint32_t pid;
    uint32_t reserved;
    uint8_t nonce[MCS_NONCE];
    char boot_id[40];        /* same-host test */
    char unix_name[MCS_UNIX_NAME]; /* abstract unix socket for shm fds ("" = none) */
} mcs_hs_hello;

typedef struct {             /* client -> server */
    uint32_t magic;
    uint16_t version;
    uint16_t flags;
    uint8_t nonce[MCS_NONCE];
    uint8_t mac[MCS_MAC];
} mcs_hs_reply;

typedef struct {             /* server -> client */
    uint32_t magic;
    int32_t status;
    uint8_t mac[MCS_MAC];
} mcs_hs_verdict;

/* ---- registration ---- */
typedef struct {
    uint64_t base, len;
    int fd;                  /* dup of a memfd, or -1 */
    uint64_t fd_off;
    int busy;                /* server operations using the region right now */
    int dying;               /* unregister waits for busy == 0 */
} mcs_region;

/* ---- batches ---- */
struct mcs_batch;
typedef struct mcs_slice {
    struct mcs_slice *next;
    struct mcs_batch *batch;
    uint32_t req;
    int op;                  /* MCS_OP_* */
    uint64_t local, remote, len;
    uint64_t wire_id;        /* request id on the stream that carries it */
    struct mcs_rdma_qp *rdma_qp; /* when posted over rdma */
    /* Record reads (mcs_batch_submit_rec): the first hdr_len payload bytes go
     * to hdr_local, the other len - hdr_len to local; the receiving thread
     * computes the CRC32C of that value part while it is hot in cache. */
    uint64_t hdr_local;
    uint32_t hdr_len;
    uint8_t crc_on;          /* compute crc as the value part arrives (reads) or
                              * as it is sent (record writes) */
    uint8_t crc_done;        /* crc holds crc32c(value part) */
    uint8_t rec_hdr;         /* a record write's header: sent only once its value is
                              * in the peer's memory (mcs_recw_gate) */
    uint32_t crc;
} mcs_slice;

/* One record read of a batch: checked when its last slice finishes. Record
 * writes use the same job: nslices value slices, then the header slice. */
typedef struct {
    uint8_t *hdr;            /* engine-owned copy of the header (hdr_len bytes) */
    const char *key;         /* engine-owned copy of the key the header must name */
    uint32_t hdr_len, key_len;
    uint64_t value, value_len;
    int first_slice, nslices;
    /* record writes */
    uint64_t remote;         /* the record's first byte in the peer */
    uint64_t epoch, raw_len;
    uint8_t codec, flags;
    int vals_pending;        /* value slices not finished yet (e->mu) */
    int hdr_held;            /* the header waits for them (e->mu) */
} mcs_rec_job;

typedef struct mcs_batch {
    int64_t id;
    int n;
    int pending;             /* requests not yet finished */
    int freed;               /* user freed it; last completion releases it */
    int live_slices;         /* slices still queued or in flight */
    mcs_req_status *st;
    int *slices_left;        /* per request */
    mcs_slice *slices;
    int nslices;
    mcs_rec_job *rec;        /* record reads/writes: one per request, else NULL */
    uint8_t *rec_mem;        /* their headers and keys */
    int rec_write;           /* rec holds record writes */
    struct mcs_peer *peer;   /* record writes: where held headers are queued */
} mcs_batch;

/* ---- peers ---- */
typedef struct {
    uint64_t remote_base, len;
    void *ptr;               /* where remote_base lands here */
    void *map_addr;          /* the mmap (page aligned) */
    uint64_t map_len;
} mcs_shm_map_t;

struct mcs_peer;
typedef struct {
    struct mcs_peer *peer;
    int idx;
    int fd;
    pthread_t th;
    int started;
    mcs_slice *ih, *it;      /* in flight, in wire order */
    int n_inflight, reads_inflight;
    uint64_t inflight_bytes, next_id;
} mcs_stream;

typedef struct mcs_peer {
    struct mcs_engine *e;
    int id;
    int local;               /* this engine's own memory */
    char host[256];
    int port;
    int flags;
    int refs;                /* submitters using the peer (engine mu) */
    int closing;
    pthread_mutex_t mu;      /* slice queue */
    pthread_cond_t cv;
    mcs_slice *qh, *qt;
    int stop;                /* streams exit (p->mu) */
    uint64_t down_until_ns;  /* after a failed connect, fail fast until then */
    mcs_stream streams[MCS_MAX_STREAMS];
    int nstreams;
    /* tcp inline lane (transport_tcp.c): small lone requests run in the caller's thread */
    atomic_int inline_busy;  /* one caller at a time; others use the streams */
    int inline_fd1;          /* its connection's fd + 1; 0: none (calloc'd peers start so) */
    uint64_t inline_ids;     /* request ids on it (inline_busy holder only) */
    /* shm */
    pthread_rwlock_t shm_lock;
    mcs_shm_map_t maps[MCS_MAX_SHM_MAPS];
    int nmaps;
    int shm_sock;            /* unix socket to the peer, -1 when none */
    uint64_t last_refresh_ns;
    char unix_name[MCS_UNIX_NAME];
    char boot_id[40];
    struct mcs_rdma_qp *rdma_qp;
} mcs_peer;

/* ---- server connections ---- */
typedef struct mcs_conn {
    struct mcs_conn *next;
    struct mcs_engine *e;
    int fd;
    int is_unix;
    struct mcs_rdma_qp *rdma_qp;
    pthread_t th;
    atomic_int done;
} mcs_conn;

struct mcs_engine {
    mcs_engine_opts opts;
    uint8_t secret[256];
    int secret_len;
    char boot_id[40];

    pthread_mutex_t reg_mu;
    pthread_cond_t reg_cv;
    mcs_region *regions;     /* sorted by base */
    int nregions, capregions;

    pthread_mutex_t mu;      /* batches and peers */
    pthread_cond_t done_cv;
    mcs_batch **batches;
    int nbatch_slots;
    uint32_t batch_gen;
    mcs_peer *peers[MCS_MAX_PEERS];

    /* server */
    pthread_mutex_t srv_mu;
    int listen_fd, unix_fd;
    int wake[2];
    pthread_t acceptor;
    int serving;
    char unix_name[MCS_UNIX_NAME];
    mcs_conn *conns;
    struct mcs_rdma *rdma;   /* NULL unless rdma was enabled and a device opened */

    atomic_ullong conns_accepted, conns_active, bad_requests, auth_failures,
        requests_served, bytes_served, shm_mappings;
};

/* engine.c */
uint64_t mcs_now_ns(void);
int mcs_region_acquire(mcs_engine *e, uint64_t addr, uint64_t len);
void mcs_region_release(mcs_engine *e, uint64_t addr);
void mcs_slice_done(mcs_engine *e, mcs_slice *s, int code, uint64_t bytes);
int mcs_read_full(int fd, void *buf, size_t n);
int mcs_write_full(int fd, const void *buf, size_t n);
int mcs_writev_full(int fd, struct iovec *iov, int cnt);
void mcs_wire_encode(uint8_t out[MCS_WIRE_HDR], const mcs_wire_hdr *h);
void mcs_wire_decode(mcs_wire_hdr *h, const uint8_t in[MCS_WIRE_HDR]);
int mcs_wire_validate(mcs_engine *e, const mcs_wire_hdr *h);
void mcs_sock_tune(mcs_engine *e, int fd, int tcp);

/* auth.c: handshakes; 0 or an MCS_E* code */
int mcs_hs_server(mcs_engine *e, int fd);
int mcs_hs_client(mcs_engine *e, int fd, mcs_hs_hello *hello_out);

/* transport_tcp.c */
int mcs_tcp_listen(mcs_engine *e, const char *host, int port, int *bound_port);
void mcs_tcp_stop(mcs_engine *e);
int mcs_tcp_peer_start(mcs_engine *e, mcs_peer *p);
void mcs_tcp_peer_stop(mcs_engine *e, mcs_peer *p);
/* flags: MCS_SUBMIT_* (MCS_SUBMIT_NO_INLINE: straight to the streams) */
void mcs_tcp_enqueue(mcs_peer *p, mcs_slice *head, mcs_slice *tail, int flags);
/* Queue one slice for the streams (a record write's header whose value is in). */
void mcs_tcp_push(mcs_peer *p, mcs_slice *s);
int mcs_tcp_connect(mcs_engine *e, const char *host, int port, mcs_hs_hello *hello);

/* engine.c: record writes. gate: 1 when header slice h may be sent now (its
 * value is in; the header is then sealed), 0 when it is held (queued by the
 * completion of its value) or failed (its value failed). seal: encode h's
 * header with the CRC of the value as sent. */
int mcs_recw_gate(mcs_engine *e, mcs_slice *h);
void mcs_recw_seal(mcs_slice *h);
void mcs_recw_encode(const mcs_rec_job *j, uint32_t value_crc);

/* transport_shm.c */
int mcs_shm_serve_conn(mcs_engine *e, int fd);
int mcs_shm_peer_connect(mcs_engine *e, mcs_peer *p);
int mcs_shm_refresh(mcs_engine *e, mcs_peer *p);
void mcs_shm_peer_release(mcs_engine *e, mcs_peer *p);
int mcs_shm_peer_alive(mcs_peer *p);
int mcs_shm_map_at(int fd, uint64_t len, uint64_t off, int writable, mcs_shm_map_t *m);
/* Record reads: the first hdr_len bytes of the remote range go to hdr, the
 * rest to the request's local address, its CRC32C computed in the same pass. */
typedef struct {
    uint64_t hdr;
    uint32_t hdr_len;
    uint32_t crc;            /* out */
    const mcs_rec_job *wr;   /* a record write: value copied first, then this job's
                              * header, sealed with the copy's CRC */
} mcs_rec_split;
/* Copy for a shm/local request; 1 when handled (code in *code), 0 when the
 * remote range is not mapped (the caller routes it to tcp). rec: NULL, or the
 * split of a record read. */
int mcs_shm_try_copy(mcs_engine *e, mcs_peer *p, const mcs_request *r, mcs_rec_split *rec,
                     int *code);

/* transport_rdma.c (no-ops when built without libibverbs) */
void mcs_rdma_close(mcs_engine *e);
void mcs_rdma_reg(mcs_engine *e, uint64_t base, uint64_t len);
void mcs_rdma_dereg(mcs_engine *e, uint64_t base);
int mcs_rdma_serve_connect(mcs_engine *e, mcs_conn *c, const mcs_wire_hdr *h);
void mcs_rdma_conn_release(mcs_engine *e, mcs_conn *c);
int mcs_rdma_peer_connect(mcs_engine *e, mcs_peer *p);
void mcs_rdma_peer_release(mcs_engine *e, mcs_peer *p);
int mcs_rdma_try_post(mcs_engine *e, mcs_peer *p, mcs_slice *s);
#endif
