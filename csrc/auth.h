/* Connection handshake with optional shared-secret authentication.
 *
 * SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104) are implemented here so the
 * engine needs no crypto library. A handshake is challenge/response in both
 * directions: each side proves it holds the secret by MACing the other side's
 * fresh nonce, and the secret itself never crosses the wire. */
#ifndef MCS_AUTH_H
#define MCS_AUTH_H
#include <stddef.h>
#include <stdint.h>


void mcs_sha256(const uint8_t *msg, size_t n, uint8_t out[32]);
void mcs_hmac_sha256(const uint8_t *key, size_t klen, const uint8_t *msg, size_t n,
                     uint8_t out[32]);
/* 1 when equal; time depends only on n. */
int mcs_ct_equal(const uint8_t *a, const uint8_t *b, size_t n);
#endif
