// Internal: CRC-32 as zlib, gzip, PNG and Ethernet compute it (IEEE 802.3, reflected
// polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF): the checksum of the
// parameter files, so files written when zlib computed it still load.
#pragma once

#include <cstddef>
#include <cstdint>

namespace im2gemm::detail {

/// Continues a CRC-32 over n more bytes: crc32(crc32(0, a, na), b, nb) == crc32 of a then b.
/// crc32(0, p, 0) == 0; crc32(0, "123456789", 9) == 0xCBF43926 (the standard check value).
std::uint32_t crc32(std::uint32_t crc, const void* data, std::size_t n);

}  // namespace im2gemm::detail
