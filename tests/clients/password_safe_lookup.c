/* Password-safe style use of a PKCS#11 token (tests/clients/password_safe_test.sh).
 *
 *   password_safe_lookup LIBRARY SERIAL LABEL PIN_FILE KEY_LABEL
 *
 * Password safes are configured with a library path, a token serial, a token label and a PIN —
 * never a slot number. This program does exactly that: loads LIBRARY by path, enumerates the slots
 * with a token, picks the one whose token serial AND label match (blank-padded fields compared
 * exactly), logs in, finds the RSA key pair labelled KEY_LABEL, generates a fresh AES-256
 * data-encryption key (session object, extractable), wraps it with the RSA public key
 * (CKM_RSA_PKCS_OAEP with SHA-1/MGF1-SHA1, and CKM_RSA_PKCS), unwraps it with the private key,
 * and checks that the unwrapped key encrypts exactly like the original (AES-CBC-PAD, same IV)
 * and decrypts what the original encrypted. Exit 0 on success.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR p11;

#define CHECK(call)                                                                 \
  do {                                                                              \
    CK_RV rv_ = (call);                                                             \
    if (rv_ != CKR_OK) {                                                            \
      fprintf(stderr, "password_safe_lookup: %s failed: CKR 0x%08lx\n", #call,     \
              (unsigned long)rv_);                                                  \
      exit(1);                                                                      \
    }                                                                               \
  } while (0)

static void die(const char *msg) {
  fprintf(stderr, "password_safe_lookup: FAIL: %s\n", msg);
  exit(1);
}

/* A blank-padded Cryptoki field equals S exactly. */
static int field_is(const unsigned char *field, size_t n, const char *s) {
  size_t len = strlen(s);
  if (len > n || memcmp(field, s, len) != 0) return 0;
  for (size_t i = len; i < n; i++)
    if (field[i] != ' ') return 0;
  return 1;
}

static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label) {
  CK_KEY_TYPE kt = CKK_RSA;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_KEY_TYPE, &kt, sizeof kt},
      {CKA_LABEL, (void *)label, strlen(label)},
  };
  CK_OBJECT_HANDLE h[2];
  CK_ULONG n = 0;
  CHECK(p11->C_FindObjectsInit(s, tmpl, 3));
  CHECK(p11->C_FindObjects(s, h, 2, &n));
  CHECK(p11->C_FindObjectsFinal(s));
  if (n != 1) {
    fprintf(stderr, "password_safe_lookup: %lu RSA %s keys labelled %s\n", (unsigned long)n,
            cls == CKO_PRIVATE_KEY ? "private" : "public", label);
    exit(1);
  }
  return h[0];
}

static size_t encrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const unsigned char *iv,
                      const unsigned char *in, size_t in_len, unsigned char *out, size_t cap) {
  CK_MECHANISM m = {CKM_AES_CBC_PAD, (void *)iv, 16};
  CK_ULONG n = cap;
  CHECK(p11->C_EncryptInit(s, &m, key));
  CHECK(p11->C_Encrypt(s, (CK_BYTE_PTR)in, in_len, out, &n));
  return n;
}

static size_t decrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const unsigned char *iv,
                      const unsigned char *in, size_t in_len, unsigned char *out, size_t cap) {
  CK_MECHANISM m = {CKM_AES_CBC_PAD, (void *)iv, 16};
  CK_ULONG n = cap;
  CHECK(p11->C_DecryptInit(s, &m, key));
  CHECK(p11->C_Decrypt(s, (CK_BYTE_PTR)in, in_len, out, &n));
  return n;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s LIBRARY SERIAL LABEL PIN_FILE KEY_LABEL\n", argv[0]);
    return 2;
  }
  const char *library = argv[1], *serial = argv[2], *label = argv[3], *key_label = argv[5];
  char pin[256] = {0};
  FILE *pf = fopen(argv[4], "r");
  if (!pf || !fgets(pin, sizeof pin, pf)) die("cannot read the PIN file");
  fclose(pf);
  pin[strcspn(pin, "\r\n")] = 0;

  /* 1. The library, by path. */
  void *lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!lib) die(dlerror());
  CK_C_GetFunctionList get_list = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  if (!get_list) die("no C_GetFunctionList");
  CHECK(get_list(&p11));
  CK_C_INITIALIZE_ARGS init_args;
  memset(&init_args, 0, sizeof init_args);
  init_args.flags = CKF_OS_LOCKING_OK;
  CHECK(p11->C_Initialize(&init_args));

  /* 2. Enumerate the slots with a token; match serial and label only. */
  CK_ULONG count = 0;
  CHECK(p11->C_GetSlotList(CK_TRUE, NULL, &count));
  if (count == 0) die("no slot with a token");
  CK_SLOT_ID *slots = calloc(count, sizeof *slots);
  CHECK(p11->C_GetSlotList(CK_TRUE, slots, &count));
  int found = 0;
  CK_SLOT_ID slot = 0;
  for (CK_ULONG i = 0; i < count; i++) {
    CK_TOKEN_INFO ti;
    if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK) continue;
    int match = field_is(ti.serialNumber, sizeof ti.serialNumber, serial) &&
                field_is(ti.label, sizeof ti.label, label);
    printf("token: label \"%.32s\" serial \"%.16s\"%s\n", ti.label, ti.serialNumber,
           match ? "  <- selected" : "");
    if (match) {
      if (found) die("two tokens match serial and label");
      found = 1;
      slot = slots[i];
      if (!(ti.flags & CKF_LOGIN_REQUIRED)) die("token does not require login");
      if (!(ti.flags & CKF_TOKEN_INITIALIZED)) die("token not initialised");
    }
  }
  free(slots);
  if (!found) die("no token with that serial and label");

  /* 3. Log in. */
  CK_SESSION_HANDLE s;
  CHECK(p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
  CHECK(p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)));
  memset(pin, 0, sizeof pin);

  /* 4. The RSA key pair. */
  CK_OBJECT_HANDLE pub = find_one(s, CKO_PUBLIC_KEY, key_label);
  CK_OBJECT_HANDLE priv = find_one(s, CKO_PRIVATE_KEY, key_label);
  printf("RSA key pair \"%s\" found\n", key_label);

  /* 5. A fresh AES-256 data-encryption key (session object, extractable so it can be wrapped). */
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG len32 = 32;
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
  CK_KEY_TYPE aes = CKK_AES;
  CK_ATTRIBUTE gen_tmpl[] = {
      {CKA_TOKEN, &no, sizeof no},         {CKA_VALUE_LEN, &len32, sizeof len32},
      {CKA_ENCRYPT, &yes, sizeof yes},     {CKA_DECRYPT, &yes, sizeof yes},
      {CKA_EXTRACTABLE, &yes, sizeof yes}, {CKA_SENSITIVE, &yes, sizeof yes},
  };
  CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
  CK_OBJECT_HANDLE dek;
  CHECK(p11->C_GenerateKey(s, &keygen, gen_tmpl, 6, &dek));

  static const unsigned char plain[] = "the password database's master data, 47 bytes.";
  unsigned char iv[16];
  CHECK(p11->C_GenerateRandom(s, iv, sizeof iv));
  unsigned char ct_orig[128];
  size_t ct_len = encrypt(s, dek, iv, plain, sizeof plain, ct_orig, sizeof ct_orig);

  CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
  struct {
    const char *name;
    CK_MECHANISM mech;
  } wraps[] = {
      {"CKM_RSA_PKCS_OAEP (SHA-1, MGF1-SHA1)", {CKM_RSA_PKCS_OAEP, &oaep, sizeof oaep}},
      {"CKM_RSA_PKCS", {CKM_RSA_PKCS, NULL, 0}},
  };
  for (size_t w = 0; w < sizeof wraps / sizeof wraps[0]; w++) {
    /* 6. Wrap with the public key, unwrap with the private key. */
    unsigned char wrapped[512];
    CK_ULONG wrapped_len = 0;
    CHECK(p11->C_WrapKey(s, &wraps[w].mech, pub, dek, NULL, &wrapped_len));
    if (wrapped_len > sizeof wrapped) die("wrapped key too long");
    CHECK(p11->C_WrapKey(s, &wraps[w].mech, pub, dek, wrapped, &wrapped_len));
    if (wrapped_len != 256) die("an RSA-2048 wrap is not 256 bytes");
    CK_ATTRIBUTE unwrap_tmpl[] = {
        {CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &aes, sizeof aes},
        {CKA_TOKEN, &no, sizeof no},         {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_DECRYPT, &yes, sizeof yes},     {CKA_SENSITIVE, &yes, sizeof yes},
    };
    CK_OBJECT_HANDLE dek2;
    CHECK(p11->C_UnwrapKey(s, &wraps[w].mech, priv, wrapped, wrapped_len, unwrap_tmpl, 6, &dek2));

    /* 7. The unwrapped key is the same key, by function. (Its CKA_VALUE_LEN is not checked:
     * SoftHSM reports 0 for unwrapped AES keys, directly and through hsmux alike.) */
    unsigned char ct2[128], pt[128];
    size_t ct2_len = encrypt(s, dek2, iv, plain, sizeof plain, ct2, sizeof ct2);
    if (ct2_len != ct_len || memcmp(ct2, ct_orig, ct_len) != 0)
      die("the unwrapped key encrypts differently");
    size_t pt_len = decrypt(s, dek2, iv, ct_orig, ct_len, pt, sizeof pt);
    if (pt_len != sizeof plain || memcmp(pt, plain, pt_len) != 0)
      die("the unwrapped key does not decrypt the original's ciphertext");
    printf("%s: wrapped (%lu bytes), unwrapped, encrypts identically (%zu-byte ciphertext)\n",
           wraps[w].name, (unsigned long)wrapped_len, ct2_len);
    CHECK(p11->C_DestroyObject(s, dek2));
  }
  CHECK(p11->C_DestroyObject(s, dek));
  CHECK(p11->C_Logout(s));
  CHECK(p11->C_CloseSession(s));
  CHECK(p11->C_Finalize(NULL));
  printf("password_safe_lookup: OK\n");
  return 0;
}
