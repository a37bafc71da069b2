// The one table of the Cryptoki 2.40 surface.
//
// Each row: X(id, Name, (C parameters), module body). `id` is the function's
// index in CK_FUNCTION_LIST and its number on the wire (CallRequest.function).
// The module expands the rows into the exported C_* shells, the function list
// and the export checks (module/exports.cc); the agent uses the ids to
// dispatch (agent/dispatch.cc). Module bodies are expressions evaluated in
// namespace hsmux::module (module/bridge.h): `Remote(...)` marshals the
// arguments with typed wrappers and forwards the call; other bodies are
// answered in the module.
#pragma once

#include <cstdint>

// clang-format off
#define HSMUX_CRYPTOKI_FUNCTIONS(X)                                                               \
  X(1, Initialize, (CK_VOID_PTR pInitArgs), Initialize(pInitArgs))                                \
  X(2, Finalize, (CK_VOID_PTR pReserved), Finalize(pReserved))                                    \
  X(3, GetInfo, (CK_INFO_PTR pInfo), GetInfo(pInfo))                                              \
  X(4, GetFunctionList, (CK_FUNCTION_LIST_PTR_PTR ppFunctionList), GetFunctionList(ppFunctionList)) \
  X(5, GetSlotList, (CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount),       \
    GetSlotList(tokenPresent, pSlotList, pulCount))                                               \
  X(6, GetSlotInfo, (CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo), GetSlotInfo(slotID, pInfo))      \
  X(7, GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo),                                \
    Remote(F::kGetTokenInfo, Slot(slotID), StructOut(pInfo)))                                     \
  X(8, GetMechanismList, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount), \
    Remote(F::kGetMechanismList, Slot(slotID), ListOut(pMechanismList, pulCount)))                \
  X(9, GetMechanismInfo, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo), \
    Remote(F::kGetMechanismInfo, Slot(slotID), Ulong(type), StructOut(pInfo)))                    \
  X(10, InitToken, (CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel), \
    NotOffered(F::kInitToken))                                                                    \
  X(11, InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),           \
    NotOffered(F::kInitPIN))                                                                      \
  X(12, SetPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen), \
    Remote(F::kSetPIN, Ulong(hSession), Pin(pOldPin, ulOldLen), Pin(pNewPin, ulNewLen)))                                                                       \
  X(13, OpenSession, (CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession), \
    OpenSession(slotID, flags, phSession))                                                        \
  X(14, CloseSession, (CK_SESSION_HANDLE hSession), Remote(F::kCloseSession, Ulong(hSession)))    \
  X(15, CloseAllSessions, (CK_SLOT_ID slotID), Remote(F::kCloseAllSessions, Slot(slotID)))        \
  X(16, GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo),                  \
    Remote(F::kGetSessionInfo, Ulong(hSession), StructOut(pInfo)))                                \
  X(17, GetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen), \
    NotOffered(F::kGetOperationState))                                                            \
  X(18, SetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey), \
    NotOffered(F::kSetOperationState))                                                            \
  X(19, Login, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen), \
    Remote(F::kLogin, Ulong(hSession), Ulong(userType), Pin(pPin, ulPinLen)))                     \
  X(20, Logout, (CK_SESSION_HANDLE hSession), Remote(F::kLogout, Ulong(hSession)))                \
  X(21, CreateObject, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject), \
    Remote(F::kCreateObject, Ulong(hSession), Template(pTemplate, ulCount), UlongOut(phObject)))  \
  X(22, CopyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject), \
    Remote(F::kCopyObject, Ulong(hSession), Ulong(hObject), Template(pTemplate, ulCount), UlongOut(phNewObject))) \
  X(23, DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject),                    \
    Remote(F::kDestroyObject, Ulong(hSession), Ulong(hObject)))                                   \
  X(24, GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize), \
    Remote(F::kGetObjectSize, Ulong(hSession), Ulong(hObject), UlongOut(pulSize)))                \
  X(25, GetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
    Remote(F::kGetAttributeValue, Ulong(hSession), Ulong(hObject), Queries(pTemplate, ulCount)))  \
  X(26, SetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
    Remote(F::kSetAttributeValue, Ulong(hSession), Ulong(hObject), Template(pTemplate, ulCount))) \
  X(27, FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
    Remote(F::kFindObjectsInit, Ulong(hSession), Template(pTemplate, ulCount)))                   \
  X(28, FindObjects, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount), \
    Remote(F::kFindObjects, Ulong(hSession), HandlesOut(phObject, ulMaxObjectCount, pulObjectCount))) \
  X(29, FindObjectsFinal, (CK_SESSION_HANDLE hSession), Remote(F::kFindObjectsFinal, Ulong(hSession))) \
  X(30, EncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    Remote(F::kEncryptInit, Ulong(hSession), Mech(pMechanism), Ulong(hKey)))                      \
  X(31, Encrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData, CK_ULONG_PTR pulEncryptedDataLen), \
    Remote(F::kEncrypt, Ulong(hSession), In(pData, ulDataLen), Out(pEncryptedData, pulEncryptedDataLen))) \
  X(32, EncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen), \
    Remote(F::kEncryptUpdate, Ulong(hSession), In(pPart, ulPartLen), Out(pEncryptedPart, pulEncryptedPartLen))) \
  X(33, EncryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen), \
    Remote(F::kEncryptFinal, Ulong(hSession), Out(pLastEncryptedPart, pulLastEncryptedPartLen)))  \
  X(34, DecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    Remote(F::kDecryptInit, Ulong(hSession), Mech(pMechanism), Ulong(hKey)))                      \
  X(35, Decrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen), \
    Remote(F::kDecrypt, Ulong(hSession), In(pEncryptedData, ulEncryptedDataLen), Out(pData, pulDataLen))) \
  X(36, DecryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen), \
    Remote(F::kDecryptUpdate, Ulong(hSession), In(pEncryptedPart, ulEncryptedPartLen), Out(pPart, pulPartLen))) \
  X(37, DecryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen), \
    Remote(F::kDecryptFinal, Ulong(hSession), Out(pLastPart, pulLastPartLen)))                    \
  X(38, DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism),                    \
    Remote(F::kDigestInit, Ulong(hSession), Mech(pMechanism)))                                    \
  X(39, Digest, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen), \
    Remote(F::kDigest, Ulong(hSession), In(pData, ulDataLen), Out(pDigest, pulDigestLen)))        \
  X(40, DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),        \
    Remote(F::kDigestUpdate, Ulong(hSession), In(pPart, ulPartLen)))                              \
  X(41, DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey),                           \
    Remote(F::kDigestKey, Ulong(hSession), Ulong(hKey)))                                          \
  X(42, DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen), \
    Remote(F::kDigestFinal, Ulong(hSession), Out(pDigest, pulDigestLen)))                         \
  X(43, SignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    Remote(F::kSignInit, Ulong(hSession), Mech(pMechanism), Ulong(hKey)))                         \
  X(44, Sign, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen), \
    Remote(F::kSign, Ulong(hSession), In(pData, ulDataLen), Out(pSignature, pulSignatureLen)))    \
  X(45, SignUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),          \
    Remote(F::kSignUpdate, Ulong(hSession), In(pPart, ulPartLen)))                                \
  X(46, SignFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen), \
    Remote(F::kSignFinal, Ulong(hSession), Out(pSignature, pulSignatureLen)))                     \
  X(47, SignRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    Remote(F::kSignRecoverInit, Ulong(hSession), Mech(pMechanism), Ulong(hKey)))                  \
  X(48, SignRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen), \
    Remote(F::kSignRecover, Ulong(hSession), In(pData, ulDataLen), Out(pSignature, pulSignatureLen))) \
  X(49, VerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    Remote(F::kVerifyInit, Ulong(hSession), Mech(pMechanism), Ulong(hKey)))                       \
  X(50, Verify, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen), \
    Remote(F::kVerify, Ulong(hSession), In(pData, ulDataLen), In(pSignature, ulSignatureLen)))    \
  X(51, VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),        \
    Remote(F::kVerifyUpdate, Ulong(hSession), In(pPart, ulPartLen)))                              \
  X(52, VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen), \
    Remote(F::kVerifyFinal, Ulong(hSession), In(pSignature, ulSignatureLen)))                     \
  X(53, VerifyRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey), \
    Remote(F::kVerifyRecoverInit, Ulong(hSession), Mech(pMechanism), Ulong(hKey)))                \
  X(54, VerifyRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen), \
    Remote(F::kVerifyRecover, Ulong(hSession), In(pSignature, ulSignatureLen), Out(pData, pulDataLen))) \
  X(55, DigestEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen), \
    Remote(F::kDigestEncryptUpdate, Ulong(hSession), In(pPart, ulPartLen), Out(pEncryptedPart, pulEncryptedPartLen))) \
  X(56, DecryptDigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen), \
    Remote(F::kDecryptDigestUpdate, Ulong(hSession), In(pEncryptedPart, ulEncryptedPartLen), Out(pPart, pulPartLen))) \
  X(57, SignEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen), \
    Remote(F::kSignEncryptUpdate, Ulong(hSession), In(pPart, ulPartLen), Out(pEncryptedPart, pulEncryptedPartLen))) \
  X(58, DecryptVerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen), \
    Remote(F::kDecryptVerifyUpdate, Ulong(hSession), In(pEncryptedPart, ulEncryptedPartLen), Out(pPart, pulPartLen))) \
  X(59, GenerateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey), \
    Remote(F::kGenerateKey, Ulong(hSession), Mech(pMechanism), Template(pTemplate, ulCount), UlongOut(phKey))) \
  X(60, GenerateKeyPair, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey), \
    Remote(F::kGenerateKeyPair, Ulong(hSession), Mech(pMechanism), Template(pPublicKeyTemplate, ulPublicKeyAttributeCount), Template(pPrivateKeyTemplate, ulPrivateKeyAttributeCount), UlongOut(phPublicKey), UlongOut(phPrivateKey))) \
  X(61, WrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen), \
    Remote(F::kWrapKey, Ulong(hSession), Mech(pMechanism), Ulong(hWrappingKey), Ulong(hKey), Out(pWrappedKey, pulWrappedKeyLen))) \
  X(62, UnwrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey), \
    Remote(F::kUnwrapKey, Ulong(hSession), Mech(pMechanism), Ulong(hUnwrappingKey), In(pWrappedKey, ulWrappedKeyLen), Template(pTemplate, ulAttributeCount), UlongOut(phKey))) \
  X(63, DeriveKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey), \
    Remote(F::kDeriveKey, Ulong(hSession), Mech(pMechanism), Ulong(hBaseKey), Template(pTemplate, ulAttributeCount), UlongOut(phKey))) \
  X(64, SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen),          \
    Remote(F::kSeedRandom, Ulong(hSession), In(pSeed, ulSeedLen)))                                \
  X(65, GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen), \
    Remote(F::kGenerateRandom, Ulong(hSession), FixedOut(RandomData, ulRandomLen)))               \
  X(66, GetFunctionStatus, (CK_SESSION_HANDLE hSession), NotParallel(hSession))                   \
  X(67, CancelFunction, (CK_SESSION_HANDLE hSession), NotParallel(hSession))                      \
  X(68, WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved),          \
    WaitForSlotEvent(flags, pSlot, pReserved))
// clang-format on

namespace hsmux::wire {

// Function numbers, generated from the table.
enum class F : uint32_t {
#define HSMUX_FN_ENUM(id, name, params, body) k##name = id,
  HSMUX_CRYPTOKI_FUNCTIONS(HSMUX_FN_ENUM)
#undef HSMUX_FN_ENUM
};

inline constexpr uint32_t kFunctionCount = 68;

// "C_Sign" etc. for log lines; "C_?" for numbers outside the table.
const char* FunctionName(uint32_t id);

// True for calls made inside an active operation (C_Encrypt, C_SignUpdate,
// C_FindObjects, ...): an error other than CKR_BUFFER_TOO_SMALL ends the
// operation, also when the module finds it locally.
bool IsOperationCall(F f);

}  // namespace hsmux::wire
