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

/* ---- carry-less multiply folding (AVX-512 + VPCLMULQDQ) for large buffers ----
 * Sixteen 128-bit lanes fold the message forward: a lane X standing D bits before
 * the data it meets becomes clmul(X.lo, x^(D+31)) ^ clmul(X.hi, x^(D-33)) (constants
 * in the reflected domain, mod P), which keeps the remainder mod P. The lanes are
 * then folded into one, whose crc32 (hardware instruction, zero initial state)
 * equals the message's. Full-width loads and stores make the fused copy run at
 * memcpy speed out of cache, where the scalar three-lane loop does not. */
#include <immintrin.h>
#define FOLD_TARGET __attribute__((target("sse4.2,pclmul,avx512f,avx512vl,vpclmulqdq")))
/* From 512 bytes up the fold beats the crc32 lanes, cached or not (AMD EPYC, 2026-11-24:
 * 42 vs 23 GB/s at 512 B, 64 vs 22 GB/s at 64 KiB, 59 vs 54 GB/s at 1 MiB), once its
 * constants are computed once rather than per call (they cost ~1.5 us). */
#define FOLD_MIN 512

FOLD_TARGET static inline __m128i fold128(__m128i x, __m128i k) {
    return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

FOLD_TARGET static inline __m512i fold512(__m512i x, __m512i k) {
    return _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00),
                            _mm512_clmulepi64_epi128(x, k, 0x11));
}

/* The folding distances' constants, x^(D-33) and x^(D+31) mod P (reflected) for
 * D = 2048, 512, 128: fixed numbers, so they are not recomputed per call (that cost
 * ~1.5 us, more than folding 64 KiB). Computed with gf2_mulmod by square-and-multiply;
 * tests/test_checksum_codec.py checks every size class against a bitwise reference. */
static const uint32_t FOLD_K[6] = {0xb9e02b86u, 0xdcb17aa4u, 0x9e4addf8u,
                                   0x740eef02u, 0x493c7d27u, 0xf20c0dfeu};

FOLD_TARGET static __m128i fold_const(int i) {
    return _mm_set_epi64x((long long)FOLD_K[2 * i], (long long)FOLD_K[2 * i + 1]);
}

/* n >= 256. Returns the finalized crc32c(crc, src[0..n)); copies to dst when non-NULL. */
FOLD_TARGET static uint32_t fold_crc(uint32_t crc, const uint8_t *src, size_t n, uint8_t *dst) {
    const __m512i k2048 = _mm512_broadcast_i32x4(fold_const(0));
    const __m512i k512 = _mm512_broadcast_i32x4(fold_const(1));
    const __m128i k128 = fold_const(2);
    __m512i z[4];
    for (int i = 0; i < 4; i++) {
        z[i] = _mm512_loadu_si512((const void *)(src + 64 * i));
        if (dst) _mm512_storeu_si512((void *)(dst + 64 * i), z[i]);
    }
    z[0] = _mm512_xor_si512(z[0], _mm512_castsi128_si512(_mm_cvtsi32_si128((int)~crc)));
    size_t off = 256;
    for (; off + 256 <= n; off += 256) {
        for (int i = 0; i < 4; i++) {
            __m512i d = _mm512_loadu_si512((const void *)(src + off + 64 * i));
            if (dst) _mm512_storeu_si512((void *)(dst + off + 64 * i), d);
            z[i] = _mm512_xor_si512(fold512(z[i], k2048), d);
        }
    }
    __m512i a = _mm512_xor_si512(fold512(z[0], k512), z[1]);
    a = _mm512_xor_si512(fold512(a, k512), z[2]);
    a = _mm512_xor_si512(fold512(a, k512), z[3]);
    __m128i y = _mm512_extracti32x4_epi32(a, 0);
    y = _mm_xor_si128(fold128(y, k128), _mm512_extracti32x4_epi32(a, 1));
    y = _mm_xor_si128(fold128(y, k128), _mm512_extracti32x4_epi32(a, 2));
    y = _mm_xor_si128(fold128(y, k128), _mm512_extracti32x4_epi32(a, 3));
    uint32_t s = (uint32_t)_mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(y));
    s = (uint32_t)_mm_crc32_u64(s, (uint64_t)_mm_extract_epi64(y, 1));
    s = hw_lane(s, src + off, n - off, dst ? dst + off : NULL);
    return ~s;
}

static int fold_available(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul");
}
#else
#define HAVE_HW_PATH 0
static int hw_available(void) { return 0; }
#endif

int mcs_crc32c_hw(void) { return hw_available() ? 1 : 0; }

static uint32_t crc_dispatch(uint32_t crc, const void *src, size_t n, void *dst) {
#if HAVE_HW_PATH
    if (n >= FOLD_MIN && fold_available())
        return fold_crc(crc, (const uint8_t *)src, n, (uint8_t *)dst);
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
