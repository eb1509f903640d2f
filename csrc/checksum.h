/* CRC32C (Castagnoli) and the fused copy+checksum used on every read and write
 * of a stored value: one pass over the source computes the checksum while the
 * bytes move, so verification costs no second read. */
#ifndef MCS_CHECKSUM_H
#define MCS_CHECKSUM_H
#include <stddef.h>
#include <stdint.h>

/* crc32c of buf[0..n), continuing from a previous finalized crc (0 to start). */
uint32_t mcs_crc32c(uint32_t crc, const void *buf, size_t n);
/* memcpy(dst, src, n) and return crc32c(crc, src, n) computed in the same pass. */
uint32_t mcs_copy_crc32c(void *dst, const void *src, size_t n, uint32_t crc);
/* crc32c(A || B) from crc32c(A), crc32c(B) and len(B). */
uint32_t mcs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
/* Plain copy with the GIL released (cffi drops it around every call). */
void mcs_copy(void *dst, const void *src, size_t n);
/* 1 when the hardware CRC32 instruction is used. */
int mcs_crc32c_hw(void);
#endif
