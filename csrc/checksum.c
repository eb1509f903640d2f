#include "checksum.h"

#include <string.h>

#define CRC32C_POLY 0x82f63b78u /* reflected Castagnoli polynomial */
#define LANES 3                 /* crc32 has latency 3, throughput 1: three lanes fill it */
#define LANE_MIN 4096           /* below this a single lane is faster than combining */

/* ---- GF(2) arithmetic for combining crcs (reflected bit order: bit 31 is x^0) ---- */

static uint32_t gf2_mulmod(uint32_t a, uint32_t b) {
    uint32_t prod = 0;
    for (uint32_t m = 1u << 31; m; m >>= 1) {
        if (a & m) prod ^= b;
        b = (b & 1) ? (b >> 1) ^ CRC32C_POLY : b >> 1;
    }
    return prod;
}

/* x^(8*nbytes) mod P by square-and-multiply over the bits of nbytes. */
static uint32_t x_pow_8n(uint64_t nbytes) {
    uint32_t result = 1u << 31; /* 1 */
    uint32_t sq = 1u << 23;     /* x^8 */
    while (nbytes) {
        if (nbytes & 1) result = gf2_mulmod(sq, result);
        sq = gf2_mulmod(sq, sq);
        nbytes >>= 1;
    }
    return result;
}

uint32_t mcs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    return gf2_mulmod(x_pow_8n(len_b), crc_a) ^ crc_b;
}

/* ---- portable fallback: bitwise per byte (used only off x86-64) ---- */

static uint32_t sw_update(uint32_t state, const uint8_t *p, size_t n, uint8_t *dst) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (dst) dst[i] = c;
        state ^= c;
        for (int k = 0; k < 8; k++) state = (state >> 1) ^ (CRC32C_POLY & (0u - (state & 1)));
    }
    return state;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_HW_PATH 1

__attribute__((target("sse4.2"))) static uint32_t hw_tail(uint32_t s, const uint8_t *p, size_t n,
                                                          uint8_t *dst) {
    for (size_t i = 0; i < n; i++) {
        if (dst) dst[i] = p[i];
        s = _mm_crc32_u8(s, p[i]);
    }
    return s;
}

/* One lane: state-in, state-out (not finalized), optional copy. */
__attribute__((target("sse4.2"))) static uint32_t hw_lane(uint32_t s, const uint8_t *p, size_t n,
                                                          uint8_t *dst) {
    size_t words = n / 8;
    uint64_t v;
    for (size_t i = 0; i < words; i++) {
        memcpy(&v, p + 8 * i, 8);
        if (dst) memcpy(dst + 8 * i, &v, 8);
        s = (uint32_t)_mm_crc32_u64(s, v);
    }
    return hw_tail(s, p + 8 * words, n - 8 * words, dst ? dst + 8 * words : NULL);
}

/* Three independent lanes over three equal thirds, interleaved so the crc32
 * units stay busy; the thirds' crcs are combined at the end. */
__attribute__((target("sse4.2"))) static uint32_t hw_crc(uint32_t crc, const uint8_t *p, size_t n,
                                                         uint8_t *dst) {
    if (n < LANE_MIN) return ~hw_lane(~crc, p, n, dst);
    size_t third = (n / LANES) & ~(size_t)7;
    const uint8_t *p0 = p, *p1 = p + third, *p2 = p + 2 * third;
    uint32_t s0 = ~crc, s1 = ~0u, s2 = ~0u;
    uint64_t a, b, c;
    for (size_t i = 0; i < third; i += 8) {
        memcpy(&a, p0 + i, 8);
        memcpy(&b, p1 + i, 8);
        memcpy(&c, p2 + i, 8);
        if (dst) {
            memcpy(dst + i, &a, 8);
            memcpy(dst + third + i, &b, 8);
            memcpy(dst + 2 * third + i, &c, 8);
        }
        s0 = (uint32_t)_mm_crc32_u64(s0, a);
        s1 = (uint32_t)_mm_crc32_u64(s1, b);
        s2 = (uint32_t)_mm_crc32_u64(s2, c);
    }
    size_t rest = n - 3 * third;
    s2 = hw_lane(s2, p + 3 * third, rest, dst ? dst + 3 * third : NULL);
    uint32_t out = mcs_crc32c_combine(~s0, ~s1, third);
    return mcs_crc32c_combine(out, ~s2, third + rest);
}

static int hw_available(void) { return __builtin_cpu_supports("sse4.2"); }
#else
#define HAVE_HW_PATH 0
static int hw_available(void) { return 0; }
#endif

int mcs_crc32c_hw(void) { return hw_available() ? 1 : 0; }

static uint32_t crc_dispatch(uint32_t crc, const void *src, size_t n, void *dst) {
#if HAVE_HW_PATH
    if (hw_available()) return hw_crc(crc, (const uint8_t *)src, n, (uint8_t *)dst);
#endif
    return ~sw_update(~crc, (const uint8_t *)src, n, (uint8_t *)dst);
}

uint32_t mcs_crc32c(uint32_t crc, const void *buf, size_t n) {
    return crc_dispatch(crc, buf, n, NULL);
}

uint32_t mcs_copy_crc32c(void *dst, const void *src, size_t n, uint32_t crc) {
    return crc_dispatch(crc, src, n, dst);
}

void mcs_copy(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
