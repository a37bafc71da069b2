/* A host for the shipped (static) module: it loads one or more copies of
 * libhsmux-pkcs11.so with dlopen and drives each through C_Initialize,
 * C_OpenSession, C_GenerateRandom and C_Finalize against the agent that
 * tests/e2e/with_agent.sh started (HSMUX_CONFIG).
 *
 *   module_host MODULE [MODULE2 ...]
 *
 * The host is linked with -rdynamic and defines its own grpc_init,
 * grpc_shutdown, SSL_CTX_new, OPENSSL_init_ssl and OPENSSL_init_crypto, as a
 * host with another, statically linked gRPC/OpenSSL would export them. A
 * module that let the host interpose them would call these, which abort. Afterwards the host
 * checks that no system libcrypto/libssl or OpenSSL engine was mapped into
 * the process (run it with OPENSSL_CONF naming a config that loads an engine:
 * the module must not load OpenSSL's config). Exit 0 if all is well. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static void interposed(const char* name) {
  fprintf(stderr, "module_host: FAIL: the module called the host's %s\n", name);
  fflush(stderr);
  abort();
}
/* The host's own symbols; exported by -rdynamic. */
void grpc_init(void) { interposed("grpc_init"); }
void grpc_shutdown(void) { interposed("grpc_shutdown"); }
void* SSL_CTX_new(const void* method) { (void)method; interposed("SSL_CTX_new"); return NULL; }
int OPENSSL_init_ssl(unsigned long long opts, const void* settings) {
  (void)opts; (void)settings; interposed("OPENSSL_init_ssl"); return 0;
}
/* The module's private OpenSSL initialises itself with OPENSSL_INIT_NO_LOAD_CONFIG; reaching
 * the host's copy with that flag means it was interposed. The module calls the host's
 * libcrypto on purpose, once per copy, with OPENSSL_INIT_LOAD_CONFIG (module_state.cc). */
enum { kInitLoadConfig = 0x40, kInitNoLoadConfig = 0x80 };
static int host_config_inits;
int OPENSSL_init_crypto(unsigned long long opts, const void* settings) {
  (void)settings;
  if (opts & kInitNoLoadConfig) interposed("OPENSSL_init_crypto (the module's own call)");
  if (opts & kInitLoadConfig) ++host_config_inits;
  return 1;
}

#define CHECK(call)                                                              \
  do {                                                                           \
    CK_RV rv_ = (call);                                                          \
    if (rv_ != CKR_OK) {                                                         \
      fprintf(stderr, "module_host: FAIL: %s (copy %d) = 0x%lx\n", #call, i,    \
              (unsigned long)rv_);                                               \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

enum { kMaxCopies = 4, kSlot = 1 };

int main(int argc, char** argv) {
  if (argc < 2 || argc - 1 > kMaxCopies) {
    fprintf(stderr, "usage: %s MODULE [MODULE2 ...]\n", argv[0]);
    return 2;
  }
  const int n = argc - 1;
  CK_FUNCTION_LIST* fl[kMaxCopies];
  CK_SESSION_HANDLE session[kMaxCopies];
  int i;
  for (i = 0; i < n; ++i) {
    void* h = dlopen(argv[i + 1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
      fprintf(stderr, "module_host: FAIL: dlopen %s: %s\n", argv[i + 1], dlerror());
      return 1;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (get == NULL) {
      fprintf(stderr, "module_host: FAIL: no C_GetFunctionList in %s\n", argv[i + 1]);
      return 1;
    }
    CHECK(get(&fl[i]));
    for (int j = 0; j < i; ++j) {
      if (fl[j] == fl[i]) {
        fprintf(stderr, "module_host: FAIL: copies %d and %d are the same library\n", j, i);
        return 1;
      }
    }
  }
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  args.flags = CKF_OS_LOCKING_OK;
  for (i = 0; i < n; ++i) CHECK(fl[i]->C_Initialize(&args));
  for (i = 0; i < n; ++i) {
    CK_ULONG count = 0;
    CHECK(fl[i]->C_GetSlotList(CK_TRUE, NULL, &count));
    if (count < 1) {
      fprintf(stderr, "module_host: FAIL: copy %d lists no token\n", i);
      return 1;
    }
    CHECK(fl[i]->C_OpenSession(kSlot, CKF_SERIAL_SESSION, NULL, NULL, &session[i]));
  }
  /* Interleaved: every copy keeps working while the others are in use. */
  for (int round = 0; round < 20; ++round) {
    for (i = 0; i < n; ++i) {
      unsigned char buf[32];
      memset(buf, 0, sizeof buf);
      CHECK(fl[i]->C_GenerateRandom(session[i], buf, sizeof buf));
      int nonzero = 0;
      for (size_t k = 0; k < sizeof buf; ++k) nonzero |= buf[k];
      if (!nonzero) {
        fprintf(stderr, "module_host: FAIL: copy %d returned 32 zero bytes\n", i);
        return 1;
      }
    }
  }
  /* One copy finalised, the other still works. */
  CHECK(fl[0]->C_CloseSession(session[0]));
  CHECK(fl[0]->C_Finalize(NULL));
  for (i = 1; i < n; ++i) {
    unsigned char buf[16];
    CHECK(fl[i]->C_GenerateRandom(session[i], buf, sizeof buf));
    CHECK(fl[i]->C_CloseSession(session[i]));
    CHECK(fl[i]->C_Finalize(NULL));
  }
  /* No system OpenSSL or engine may have come in through the module. */
  FILE* maps = fopen("/proc/self/maps", "r");
  if (maps == NULL) {
    perror("module_host: /proc/self/maps");
    return 1;
  }
  char line[4096];
  int bad = 0;
  while (fgets(line, sizeof line, maps) != NULL) {
    if (strstr(line, "libcrypto.so") || strstr(line, "libssl.so") || strstr(line, "engines-3") ||
        strstr(line, "libgrpc") || strstr(line, "libprotobuf")) {
      fprintf(stderr, "module_host: FAIL: mapped into the host: %s", line);
      bad = 1;
    }
  }
  fclose(maps);
  if (bad) return 1;
  if (host_config_inits != n) {
    fprintf(stderr, "module_host: FAIL: the host's OPENSSL_init_crypto(LOAD_CONFIG) ran %d times, "
            "expected once per copy (%d)\n", host_config_inits, n);
    return 1;
  }
  printf("module_host: OK, %d cop%s: initialised, 20 rounds of C_GenerateRandom, finalised\n", n,
         n == 1 ? "y" : "ies");
  return 0;
}
