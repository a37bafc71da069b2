// Reads what the registry keeps about a member object: its non-sensitive
// attributes (never a key value), and a fingerprint that matches replicas of
// the same object on other members (DESIGN §3).
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "member.h"
#include "wire/cryptoki.h"

namespace hsmux::agent {

struct ObjectSnapshot {
  CK_OBJECT_CLASS object_class = 0;
  CK_ULONG key_type = 0;  // CKA_KEY_TYPE or CKA_CERTIFICATE_TYPE; 0 if neither
  std::string cka_id;
  std::string label;
  bool is_token = false;
  bool is_private = true;
  // Every cacheable attribute the member answered, in a fixed order.
  v1::AttributeList attributes;
  // Cacheable types the member refused as sensitive.
  std::set<CK_ATTRIBUTE_TYPE> sensitive;
};

// True if the registry may keep and serve this attribute of objects of this
// class: never CKA_VALUE of secret or private keys, never private key parts.
bool Cacheable(CK_OBJECT_CLASS object_class, CK_ATTRIBUTE_TYPE type);

// The types the registry tries to read for every object.
const std::vector<CK_ATTRIBUTE_TYPE>& CachedTypes();

absl::StatusOr<ObjectSnapshot> ReadObject(Member& member, CK_SESSION_HANDLE session,
                                          CK_OBJECT_HANDLE object);

// What replicas are matched by, prefixed by how it was obtained:
//   "rsa:" modulus|exponent, "ec:" params|point (public keys, RSA private keys),
//   "sha256:" of the value (certificates, data objects),
//   "fn-sign:"/"fn-mac:"/"fn-enc:" hash of a fixed block processed by the key
//   (proof by function: EC private keys verified against a public key of the
//   same CKA_ID on the same member, secret keys by MAC or encryption),
//   "" when nothing proves identity (kept apart, reported).
std::string Fingerprint(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                        const ObjectSnapshot& snapshot);

// The value of one attribute in a snapshot, or nullptr.
const v1::Attribute* FindAttribute(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type);

}  // namespace hsmux::agent
