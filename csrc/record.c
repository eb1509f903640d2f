#include "record.h"

#include <string.h>

#include "checksum.h"

static const uint8_t MAGIC[4] = {'M', 'C', 'S', '1'};
#define VERSION 1
#define OFF_CODEC 5
#define OFF_FLAGS 6
#define OFF_KEYLEN 8
#define OFF_HLEN 10
#define OFF_VCRC 12
#define OFF_VLEN 16
#define OFF_RLEN 24
#define OFF_EPOCH 32
#define OFF_HCRC 40

/* Little-endian field access that works on any host byte order and alignment. */
static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

size_t mcs_rec_header_size(size_t key_len) {
    return (MCS_REC_FIXED + key_len + MCS_REC_ALIGN - 1) / MCS_REC_ALIGN * MCS_REC_ALIGN;
}

/* CRC of the header with the header-crc field read as zero, without copying it. */
static uint32_t header_crc(const uint8_t *h, size_t hlen) {
    static const uint8_t zero[4] = {0, 0, 0, 0};
    uint32_t c = mcs_crc32c(0, h, OFF_HCRC);
    c = mcs_crc32c(c, zero, 4);
    return mcs_crc32c(c, h + OFF_HCRC + 4, hlen - OFF_HCRC - 4);
}

int64_t mcs_rec_write(void *region, uint64_t region_len, const char *key, size_t key_len,
                      const void *value, uint64_t value_len, uint64_t epoch, uint8_t codec,
                      uint8_t flags, uint64_t raw_len) {
    if (!region || !key || key_len == 0 || key_len > MCS_REC_MAX_KEY || (!value && value_len))
        return MCS_REC_BAD_ARGS;
    size_t hlen = mcs_rec_header_size(key_len);
    if (region_len < hlen || region_len - hlen < value_len) return MCS_REC_BUFFER_TOO_SMALL;
    uint8_t *h = (uint8_t *)region;
    /* Value first, so the header (with its crc) lands last: a reader never sees a
     * valid header in front of a half-written value. */
    uint32_t vcrc = mcs_copy_crc32c(h + hlen, value, value_len, 0);
    memset(h, 0, hlen);
    memcpy(h, MAGIC, 4);
    h[4] = VERSION;
    h[OFF_CODEC] = codec;
    h[OFF_FLAGS] = flags;
    put_le(h + OFF_KEYLEN, key_len, 2);
    put_le(h + OFF_HLEN, hlen, 2);
    put_le(h + OFF_VCRC, vcrc, 4);
    put_le(h + OFF_VLEN, value_len, 8);
    put_le(h + OFF_RLEN, raw_len ? raw_len : value_len, 8);
    put_le(h + OFF_EPOCH, epoch, 8);
    memcpy(h + MCS_REC_FIXED, key, key_len);
    put_le(h + OFF_HCRC, header_crc(h, hlen), 4);
    return (int64_t)(hlen + value_len);
}

int mcs_rec_check_header(const void *region, uint64_t region_len, const char *key, size_t key_len,
                         mcs_rec_info *info) {
    const uint8_t *h = (const uint8_t *)region;
    if (!region || region_len < MCS_REC_FIXED) return MCS_REC_CORRUPT;
    if (memcmp(h, MAGIC, 4) != 0 || h[4] != VERSION) return MCS_REC_CORRUPT;
    uint64_t klen = get_le(h + OFF_KEYLEN, 2), hlen = get_le(h + OFF_HLEN, 2);
    uint64_t vlen = get_le(h + OFF_VLEN, 8);
    if (klen == 0 || klen > MCS_REC_MAX_KEY || hlen != mcs_rec_header_size(klen)) return MCS_REC_CORRUPT;
    if (hlen > region_len || vlen > region_len - hlen) return MCS_REC_CORRUPT;
    if ((uint32_t)get_le(h + OFF_HCRC, 4) != header_crc(h, hlen)) return MCS_REC_CORRUPT;
    if (key && (klen != key_len || memcmp(h + MCS_REC_FIXED, key, key_len) != 0))
        return MCS_REC_CORRUPT;
    if (info) {
        info->codec = h[OFF_CODEC];
        info->flags = h[OFF_FLAGS];
        info->header_len = (uint16_t)hlen;
        info->value_crc = (uint32_t)get_le(h + OFF_VCRC, 4);
        info->value_len = vlen;
        info->raw_len = get_le(h + OFF_RLEN, 8);
        info->epoch = get_le(h + OFF_EPOCH, 8);
    }
    return MCS_REC_OK;
}

int mcs_rec_check_split(const void *hdr, uint64_t hdr_len, uint64_t value_len, const char *key,
                        size_t key_len, mcs_rec_info *info) {
    const uint8_t *h = (const uint8_t *)hdr;
    /* The header's own length field is checked first: the crc below reads exactly
     * hdr_len bytes, never what a corrupt header claims. */
    if (!hdr || hdr_len < MCS_REC_FIXED || get_le(h + OFF_HLEN, 2) != hdr_len ||
        value_len > UINT64_MAX - hdr_len)
        return MCS_REC_CORRUPT;
    mcs_rec_info local;
    mcs_rec_info *inf = info ? info : &local;
    int rc = mcs_rec_check_header(hdr, hdr_len + value_len, key, key_len, inf);
    if (rc != MCS_REC_OK) return rc;
    return inf->value_len == value_len ? MCS_REC_OK : MCS_REC_CORRUPT;
}

int64_t mcs_rec_read(const void *region, uint64_t region_len, const char *key, size_t key_len,
                     void *dst, uint64_t dst_len, mcs_rec_info *info) {
    mcs_rec_info local;
    mcs_rec_info *inf = info ? info : &local;
    int rc = mcs_rec_check_header(region, region_len, key, key_len, inf);
    if (rc != MCS_REC_OK) return rc;
    if (dst_len < inf->value_len) return MCS_REC_BUFFER_TOO_SMALL;
    if (!dst && inf->value_len) return MCS_REC_BAD_ARGS;
    const uint8_t *v = (const uint8_t *)region + inf->header_len;
    if (mcs_copy_crc32c(dst, v, inf->value_len, 0) != inf->value_crc) return MCS_REC_CORRUPT;
    return (int64_t)inf->value_len;
}

/* Invalidate the record at region if it is still the one the master freed: a verified
 * header whose header+value length is expected_len (0: any length, for a slice the master
 * handed out without learning what was written there). The check and the write meet on one
 * aligned 8-byte word (header crc + first key bytes, unique per record): it is swapped
 * atomically from the value the check saw, so a header rewritten in between by a new
 * allocation is never touched.
 * Returns 1 zapped, 0 left alone (not that record any more), or a negative code. */
int mcs_rec_zap(void *region, uint64_t region_len, uint64_t expected_len) {
    if (!region || ((uintptr_t)region % 8) != 0) return MCS_REC_BAD_ARGS;
    if (region_len < MCS_REC_FIXED + 4) return 0;
    uint64_t *word = (uint64_t *)((uint8_t *)region + OFF_HCRC);
    uint64_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    mcs_rec_info info;
    if (mcs_rec_check_header(region, region_len, NULL, 0, &info) != MCS_REC_OK) return 0;
    if (expected_len && (uint64_t)info.header_len + info.value_len != expected_len) return 0;
    uint64_t zapped = ~seen;   /* every bit of the crc flips: the header no longer verifies */
    return __atomic_compare_exchange_n(word, &seen, zapped, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE) ? 1 : 0;
}

int64_t mcs_rec_scan(const void *region, uint64_t region_len, uint64_t lo, uint64_t hi,
                     mcs_rec_found *out, uint64_t max, uint64_t *next) {
    if (!region || !out || !next || lo % MCS_REC_ALIGN || hi > region_len) return MCS_REC_BAD_ARGS;
    const uint8_t *base = (const uint8_t *)region;
    uint64_t n = 0, end = lo;
    uint64_t off = lo;
    while (off < hi && n < max) {
        if (region_len - off < MCS_REC_FIXED || memcmp(base + off, MAGIC, 4) != 0) {
            off += MCS_REC_ALIGN;
            continue;
        }
        mcs_rec_info info;
        const uint8_t *h = base + off;
        if (mcs_rec_check_header(h, region_len - off, NULL, 0, &info) != MCS_REC_OK ||
            mcs_crc32c(0, h + info.header_len, info.value_len) != info.value_crc) {
            off += MCS_REC_ALIGN;
            continue;
        }
        out[n].offset = off;
        out[n].value_len = info.value_len;
        out[n].epoch = info.epoch;
        out[n].header_len = info.header_len;
        out[n].key_len = (uint16_t)get_le(h + OFF_KEYLEN, 2);
        out[n].flags = info.flags;
        n++;
        /* check_header bounded header + value by region_len - off */
        end = off + info.header_len + info.value_len;
        off = (end + MCS_REC_ALIGN - 1) / MCS_REC_ALIGN * MCS_REC_ALIGN;
    }
    *next = n == max ? off : (end > hi ? end : hi);
    return (int64_t)n;
}
