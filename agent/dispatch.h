// Serving one call: the dispatch table from function number to handler, and
// the handlers, grouped by family in handlers_*.cc.
#pragma once

#include "call_context.h"

namespace hsmux::agent {

// Runs the handler for ctx.request().function(); CKR_FUNCTION_NOT_SUPPORTED
// for functions the module answers itself or hsmux does not offer.
CK_RV Dispatch(CallContext& ctx);

// handlers_token.cc: slots, tokens, mechanisms, sessions, login.
CK_RV GetSlotInfo(CallContext& ctx);
CK_RV GetTokenInfo(CallContext& ctx);
CK_RV GetMechanismList(CallContext& ctx);
CK_RV GetMechanismInfo(CallContext& ctx);
CK_RV OpenSession(CallContext& ctx);
CK_RV CloseSession(CallContext& ctx);
CK_RV CloseAllSessions(CallContext& ctx);
CK_RV GetSessionInfo(CallContext& ctx);
CK_RV Login(CallContext& ctx);
CK_RV Logout(CallContext& ctx);
CK_RV SetPIN(CallContext& ctx);

// handlers_objects.cc: object management and key management.
CK_RV CreateObject(CallContext& ctx);
CK_RV CopyObject(CallContext& ctx);
CK_RV DestroyObject(CallContext& ctx);
CK_RV GetObjectSize(CallContext& ctx);
CK_RV GetAttributeValue(CallContext& ctx);
CK_RV SetAttributeValue(CallContext& ctx);
CK_RV FindObjectsInit(CallContext& ctx);
CK_RV FindObjects(CallContext& ctx);
CK_RV FindObjectsFinal(CallContext& ctx);
CK_RV GenerateKey(CallContext& ctx);
CK_RV GenerateKeyPair(CallContext& ctx);
CK_RV WrapKey(CallContext& ctx);
CK_RV UnwrapKey(CallContext& ctx);
CK_RV DeriveKey(CallContext& ctx);

// handlers_crypto.cc: operations with spec-exact state, and random.
CK_RV OperationCall(CallContext& ctx);
CK_RV SeedRandom(CallContext& ctx);
// Runs the member Init of the session's pending operations now (for
// CKU_CONTEXT_SPECIFIC login, which must reach the operation's session).
// The caller holds session.mu.
CK_RV MaterializeOperations(CallContext& ctx, ClientSession& session);
CK_RV GenerateRandom(CallContext& ctx);

}  // namespace hsmux::agent
