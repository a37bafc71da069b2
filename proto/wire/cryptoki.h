// The one place that includes the system PKCS#11 header (p11-kit's, with the
// standard CK_* compatibility names).
#pragma once

#include <p11-kit/pkcs11.h>

// p11-kit's compatibility block maps the GNU member names of the mechanism
// parameter structures to the standard ones with macros it never #undefs
// (hash_alg -> hashAlg, iv_bits -> ulIvBits, ...). Those lowercase names are
// also protobuf accessors (RsaPkcsPssParams::hash_alg(), GcmParams::iv_bits(),
// ...), so they must not leak. The standard names (hashAlg, ulIvBits, ...)
// are the structures' real member names and stay usable.
#undef hash_alg
#undef s_len
#undef source_data
#undef source_data_len
#undef counter_bits
#undef iv_ptr
#undef iv_len
#undef iv_bits
#undef aad_ptr
#undef aad_len
#undef tag_bits
#undef shared_data_len
#undef shared_data
#undef public_data_len
#undef public_data
#undef string_data
#undef string_data_len
#undef data_params
