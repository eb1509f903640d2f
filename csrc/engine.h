/* Transfer engine: the public C API (the same declarations are in engine.cdef).
 *
 * An engine owns a registration table (regions peers may touch), a tcp server
 * (optional), and peers it has opened. Requests move bytes between a local
 * address and a peer's registered memory; they are grouped in batches that
 * complete asynchronously. Every function returns 0 / a non-negative id, or a
 * negative MCS_E* code (numbers shared with mooncake_store.errors.ErrorCode). */
#ifndef MCS_ENGINE_H
#define MCS_ENGINE_H
#include <stddef.h>
#include <stdint.h>

/* Error codes (ErrorCode numbers where the meaning overlaps). */
#define MCS_OK 0
#define MCS_E_INTERNAL (-1)
#define MCS_E_BUFFER_OVERFLOW (-10)   /* range runs past the end of a region */
#define MCS_E_INVALID_PARAMS (-600)   /* bad argument, unregistered address, overlap */
#define MCS_E_TRANSFER_FAIL (-800)    /* peer gone, i/o or protocol error */
#define MCS_E_CHECKSUM (-801)         /* record read: header or value failed verification */
#define MCS_E_AUTH (-810)             /* handshake refused (engine-specific) */
#define MCS_E_RPC_FAIL (-900)         /* cannot reach the peer */
#define MCS_E_TIMEOUT (-901)          /* RPC_TIMEOUT */

/* Request opcodes and per-request states. */
#define MCS_OP_READ 0
#define MCS_OP_WRITE 1
#define MCS_ST_PENDING 0
#define MCS_ST_COMPLETED 1
#define MCS_ST_FAILED 2
#define MCS_ST_TIMEOUT 3

/* Peer transports as reported by mcs_peer_transport. */
#define MCS_TP_LOCAL 0
#define MCS_TP_SHM 1
#define MCS_TP_TCP 2
#define MCS_TP_RDMA 3

/* mcs_peer_open flags */
#define MCS_PEER_NO_SHM 1

typedef struct mcs_engine mcs_engine;

typedef struct {
    int streams;            /* tcp connections per peer (default 4, max 16) */
    int window;             /* requests in flight per stream (default 8) */
    uint64_t slice_bytes;   /* large requests are cut into slices of this size (default 1 MiB) */
    int timeout_ms;         /* i/o timeout on a stalled connection (default 30000) */
    int sockbuf;            /* SO_SNDBUF/SO_RCVBUF bytes; 0 keeps kernel autotuning */
    const uint8_t *secret;  /* shared secret for the handshake; NULL = no auth */
    int secret_len;
} mcs_engine_opts;

typedef struct {
    int state;              /* MCS_ST_* */
    int code;               /* 0 or an MCS_E* code when failed */
    uint64_t bytes;         /* bytes moved so far */
} mcs_req_status;

typedef struct {
    int opcode;             /* MCS_OP_READ: remote -> local; MCS_OP_WRITE: local -> remote */
    uint64_t local;         /* address in this process */
    uint64_t remote;        /* address in the peer's registered memory */
    uint64_t length;
} mcs_request;

typedef struct {
    uint64_t conns_accepted;
    uint64_t conns_active;
    uint64_t bad_requests;     /* malformed / out-of-bounds requests (connection closed) */
    uint64_t auth_failures;
    uint64_t requests_served;
    uint64_t bytes_served;
    uint64_t regions;
    uint64_t registered_bytes;
    uint64_t shm_mappings;     /* peer segments mapped into this process */
} mcs_stats;

void mcs_engine_opts_default(mcs_engine_opts *o);
mcs_engine *mcs_engine_create(const mcs_engine_opts *opts);
void mcs_engine_destroy(mcs_engine *e);
void mcs_engine_stats(mcs_engine *e, mcs_stats *out);
const char *mcs_strerror(int code);

/* Registration. fd >= 0 marks memfd-backed memory that same-host peers may map
 * (fd is dup'ed; fd_offset = offset of base within the file). */
int mcs_register(mcs_engine *e, uint64_t base, uint64_t len);
int mcs_register_fd(mcs_engine *e, uint64_t base, uint64_t len, int fd, uint64_t fd_offset);
int mcs_unregister(mcs_engine *e, uint64_t base);
/* 0 when [addr, addr+len) lies in one registered region, else the error code. */
int mcs_check_range(mcs_engine *e, uint64_t addr, uint64_t len);

/* Server: listen on host:port (port 0 = any); *bound_port gets the port. */
int mcs_listen(mcs_engine *e, const char *host, int port, int *bound_port);

/* Peers. Returns a peer id >= 0. mcs_peer_open_local addresses this engine's
 * own registered memory (memcpy). */
int mcs_peer_open(mcs_engine *e, const char *host, int port, int flags);
int mcs_peer_open_local(mcs_engine *e);
int mcs_peer_close(mcs_engine *e, int peer);
int mcs_peer_transport(mcs_engine *e, int peer);
/* Map a same-host segment by hand: fd/len of a memfd whose byte 0 sits at
 * remote_base in the peer's address space. */
int mcs_shm_attach(mcs_engine *e, int peer, int fd, uint64_t len, uint64_t remote_base);

/* Batch submit flags. NO_INLINE: never run the batch in the caller's thread
 * (the tcp inline lane takes a batch of at most 4 slices / 2 MiB and returns
 * when it is done); use it when the caller submits to several peers before
 * waiting, so the transfers overlap. */
#define MCS_SUBMIT_NO_INLINE 1

/* Batches. flags: MCS_SUBMIT_*. Returns a batch id > 0. */
int64_t mcs_batch_submit(mcs_engine *e, int peer, const mcs_request *reqs, int n, int flags);
/* Record reads (the record layout of record.h). Each is one READ of
 * header + value (header size from key_len) starting at `remote`: the header
 * lands in the engine, the value at `value`. The thread that receives the
 * value computes its CRC32C as the bytes arrive (shm: in the copy's pass);
 * when a record is in, its header is verified (magic, CRC, key, lengths) and
 * the value's CRC compared: status code 0, MCS_E_CHECKSUM, or a transfer code.
 * Keys are copied at submit. Returns a batch id > 0. */
typedef struct {
    uint64_t value;         /* where the value goes */
    uint64_t remote;        /* the record's first byte in the peer's memory */
    uint64_t value_len;
    const char *key;        /* the key the header must name */
    uint32_t key_len;       /* 1..4096 */
} mcs_rec_request;
int64_t mcs_batch_submit_rec(mcs_engine *e, int peer, const mcs_rec_request *reqs, int n,
                             int flags);
/* Record writes: the mirror of record reads. Record i goes to `remote` in the
 * peer's memory: its value (value_len bytes from `value`, 1 or more) at
 * remote + header size, then its header (key, epoch, codec, flags, raw_len
 * as given; raw_len 0 = value_len) with the value's CRC32C, computed by the
 * thread that sends the value (64 KiB at a time, just before each piece goes
 * out; shm: in the copy's pass). The header is written only after every byte
 * of the value is in the peer's memory (on tcp: after the value's requests
 * were answered, or behind them on the same connection), so nobody ever sees a
 * valid header in front of a torn value; a record whose value fails gets no
 * header. Keys are copied at submit. Returns a batch id > 0. */
typedef struct {
    uint64_t value;         /* where the value is read from */
    uint64_t remote;        /* the record's first byte in the peer's memory */
    uint64_t value_len;
    const char *key;
    uint32_t key_len;       /* 1..4096 */
    uint8_t codec, flags;
    uint64_t epoch, raw_len;
} mcs_recw_request;
int64_t mcs_batch_submit_recw(mcs_engine *e, int peer, const mcs_recw_request *reqs, int n,
                              int flags);
/* 0 when every request has finished (see statuses), MCS_E_TIMEOUT otherwise. */
int mcs_batch_wait(mcs_engine *e, int64_t batch, int timeout_ms);
/* Fills out[0..n) (n must equal the batch size); returns the count still pending. */
int mcs_batch_status(mcs_engine *e, int64_t batch, mcs_req_status *out, int n);
int mcs_batch_free(mcs_engine *e, int64_t batch);


/* Parse one wire request header (fuzzing and tests): 0 when valid against the
 * registration table, else the code the server would answer. */
int mcs_wire_check(mcs_engine *e, const uint8_t *hdr, int n);
#endif
