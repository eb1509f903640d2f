/* Whole-record read and write in one call: the self-describing header of
 * mooncake_store/codec.py plus the value, checksummed in the same pass as the
 * copy. Python keeps an identical parser (codec.py) for the cold tiers; the
 * tests check the two agree byte for byte. */
#ifndef MCS_RECORD_H
#define MCS_RECORD_H
#include <stddef.h>
#include <stdint.h>

#define MCS_REC_FIXED 44
#define MCS_REC_ALIGN 64
#define MCS_REC_MAX_KEY 4096

enum {
    MCS_REC_OK = 0,
    MCS_REC_BUFFER_TOO_SMALL = -600, /* INVALID_PARAMS: caller's buffer < value */
    MCS_REC_BAD_ARGS = -601,
    MCS_REC_CORRUPT = -801,          /* CHECKSUM_MISMATCH: header or value */
};

typedef struct {
    uint8_t codec;
    uint8_t flags;
    uint16_t header_len;
    uint32_t value_crc;
    uint64_t value_len;
    uint64_t raw_len;
    uint64_t epoch;
} mcs_rec_info;

/* One record found by mcs_rec_scan: the key is key_len bytes at offset + MCS_REC_FIXED. */
typedef struct {
    uint64_t offset;
    uint64_t value_len;
    uint64_t epoch;
    uint16_t header_len;
    uint16_t key_len;
    uint8_t flags;
} mcs_rec_found;

size_t mcs_rec_header_size(size_t key_len);
/* Write header + value into region[0, region_len). Returns bytes written (> 0) or a negative code. */
int64_t mcs_rec_write(void *region, uint64_t region_len, const char *key, size_t key_len,
                      const void *value, uint64_t value_len, uint64_t epoch, uint8_t codec,
                      uint8_t flags, uint64_t raw_len);
/* Verify the header in region (key must match when key != NULL) and fill info. */
int mcs_rec_check_header(const void *region, uint64_t region_len, const char *key, size_t key_len,
                         mcs_rec_info *info);
/* Verify a header held apart from its value: hdr holds exactly hdr_len bytes, and the header
 * must say it is hdr_len long with a value of value_len bytes (key must match when key != NULL).
 * The value's CRC is the caller's to compare (info->value_crc). */
int mcs_rec_check_split(const void *hdr, uint64_t hdr_len, uint64_t value_len, const char *key,
                        size_t key_len, mcs_rec_info *info);
/* Verify the header, copy the value into dst (dst_len >= value_len) checking its CRC in the same
 * pass. Returns the value length or a negative code. */
int64_t mcs_rec_read(const void *region, uint64_t region_len, const char *key, size_t key_len,
                     void *dst, uint64_t dst_len, mcs_rec_info *info);
/* Invalidate the record at region (8-byte aligned) if it verifies and its header+value length is
 * expected_len (0: any), with one atomic compare-and-swap. 1: zapped, 0: left alone, < 0: bad args. */
int mcs_rec_zap(void *region, uint64_t region_len, uint64_t expected_len);
/* Look for intact records (header and value verify) at the 64-byte lines of [lo, hi), lo
 * aligned; a record's own lines are stepped over once it is accepted. Writes at most max
 * entries to out and returns how many. *next is where a further call resumes: past the
 * last accepted record when out filled up, else max(hi, end of the last accepted record),
 * the first line a later range may hold a record on. */
int64_t mcs_rec_scan(const void *region, uint64_t region_len, uint64_t lo, uint64_t hi,
                     mcs_rec_found *out, uint64_t max, uint64_t *next);
#endif
