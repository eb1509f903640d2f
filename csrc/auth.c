/* SHA-256, HMAC-SHA256 and the connection handshake (see auth.h). */
#include "auth.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "engine_int.h"

/* ---- SHA-256 (FIPS 180-4) ---- */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    size_t fill;
    uint64_t total;
} sha256_ctx;

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->fill = 0;
    c->total = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n) {
    c->total += n;
    while (n > 0) {
        size_t take = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->buf + c->fill, p, take);
        c->fill += take;
        p += take;
        n -= take;
        if (c->fill == 64) {
            sha256_block(c->h, c->buf);
            c->fill = 0;
        }
    }
}

static void sha256_final(sha256_ctx *c, uint8_t out[32]) {
    uint64_t bits = c->total * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha256_update(c, &pad, 1);
    while (c->fill != 56) sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
}

void mcs_sha256(const uint8_t *msg, size_t n, uint8_t out[32]) {
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, msg, n);
    sha256_final(&c, out);
}

/* ---- HMAC (RFC 2104) ---- */
void mcs_hmac_sha256(const uint8_t *key, size_t klen, const uint8_t *msg, size_t n,
                     uint8_t out[32]) {
    uint8_t k[64] = {0}, pad[64], inner[32];
    if (klen > 64)
        mcs_sha256(key, klen, k);  /* long keys are hashed first */
    else if (klen > 0)
        memcpy(k, key, klen);
    sha256_ctx c;
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, msg, n);
    sha256_final(&c, inner);
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

int mcs_ct_equal(const uint8_t *a, const uint8_t *b, size_t n) {
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < n; i++) diff |= a[i] ^ b[i];
    return diff == 0;
}

/* ---- handshake ---- */
/* MAC over a role label and both nonces: the label keeps a server proof from
 * being replayed as a client proof. */
static void hs_mac(const mcs_engine *e, const char *label, const uint8_t *n1,
                   const uint8_t *n2, uint8_t out[MCS_MAC]) {
    uint8_t msg[8 + 2 * MCS_NONCE] = {0};
    memcpy(msg, label, strlen(label) < 8 ? strlen(label) : 8);
    memcpy(msg + 8, n1, MCS_NONCE);
    memcpy(msg + 8 + MCS_NONCE, n2, MCS_NONCE);
    mcs_hmac_sha256(e->secret, (size_t)e->secret_len, msg, sizeof msg, out);
}

static int fill_nonce(uint8_t *n) {
    size_t got = 0;
    while (got < MCS_NONCE) {
        ssize_t r = getrandom(n + got, MCS_NONCE - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return MCS_E_INTERNAL;
        }
        got += (size_t)r;
    }
    return 0;
}

int mcs_hs_server(mcs_engine *e, int fd) {
    mcs_hs_hello hello;
    memset(&hello, 0, sizeof hello);
    hello.magic = MCS_HS_MAGIC;
    hello.version = MCS_WIRE_VERSION;
    hello.flags = e->secret_len > 0 ? MCS_HS_AUTH : 0;
    hello.pid = (uint32_t)getpid();
    if (fill_nonce(hello.nonce)) return MCS_E_INTERNAL;
    memcpy(hello.boot_id, e->boot_id, sizeof hello.boot_id);
    memcpy(hello.unix_name, e->unix_name, sizeof hello.unix_name);
    if (mcs_write_full(fd, &hello, sizeof hello)) return MCS_E_TRANSFER_FAIL;

    mcs_hs_reply rep;
    if (mcs_read_full(fd, &rep, sizeof rep)) return MCS_E_TRANSFER_FAIL;
    mcs_hs_verdict v;
    memset(&v, 0, sizeof v);
    v.magic = MCS_HS_MAGIC;
    int ok = rep.magic == MCS_HS_MAGIC && rep.version == MCS_WIRE_VERSION;
    if (ok && e->secret_len > 0) {
        uint8_t want[MCS_MAC];
        hs_mac(e, "client", hello.nonce, rep.nonce, want);
        ok = (rep.flags & MCS_HS_AUTH) && mcs_ct_equal(want, rep.mac, MCS_MAC);
        if (ok) hs_mac(e, "server", rep.nonce, hello.nonce, v.mac);
    }
    v.status = ok ? 0 : MCS_E_AUTH;
    if (!ok) atomic_fetch_add(&e->auth_failures, 1);
    if (mcs_write_full(fd, &v, sizeof v)) return MCS_E_TRANSFER_FAIL;
    return ok ? 0 : MCS_E_AUTH;
}

int mcs_hs_client(mcs_engine *e, int fd, mcs_hs_hello *hello_out) {
    mcs_hs_hello hello;
    if (mcs_read_full(fd, &hello, sizeof hello)) return MCS_E_TRANSFER_FAIL;
    if (hello.magic != MCS_HS_MAGIC || hello.version != MCS_WIRE_VERSION)
        return MCS_E_TRANSFER_FAIL;
    hello.boot_id[sizeof hello.boot_id - 1] = 0;
    hello.unix_name[sizeof hello.unix_name - 1] = 0;
    mcs_hs_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.magic = MCS_HS_MAGIC;
    rep.version = MCS_WIRE_VERSION;
    if (fill_nonce(rep.nonce)) return MCS_E_INTERNAL;
    if (e->secret_len > 0) {
        rep.flags = MCS_HS_AUTH;
        hs_mac(e, "client", hello.nonce, rep.nonce, rep.mac);
    }
    if (mcs_write_full(fd, &rep, sizeof rep)) return MCS_E_TRANSFER_FAIL;
    mcs_hs_verdict v;
    if (mcs_read_full(fd, &v, sizeof v)) return MCS_E_AUTH;  /* refused: server closed */
    if (v.magic != MCS_HS_MAGIC) return MCS_E_TRANSFER_FAIL;
    if (v.status != 0) return MCS_E_AUTH;
    if (e->secret_len > 0) {
        /* A server without the secret cannot prove itself: refuse it too. */
        uint8_t want[MCS_MAC];
        hs_mac(e, "server", rep.nonce, hello.nonce, want);
        if (!(hello.flags & MCS_HS_AUTH) || !mcs_ct_equal(want, v.mac, MCS_MAC)) return MCS_E_AUTH;
    }
    if (hello_out) *hello_out = hello;
    return 0;
}
