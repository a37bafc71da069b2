// Java SunPKCS11 against hsmux, as identity servers use it (tests/clients/java_test.sh).
//
//   java HsmuxJavaClient.java CONFIG PIN_FILE COMMAND [ARGS...]
//
// Commands:
//   list ALIAS...          KeyStore.load with the PIN; every ALIAS must be listed
//   crypto OUT_DIR         SHA256withRSA and SHA256withECDSA (verified in software with the
//                          certificates' public keys), HmacSHA256 (MAC of a fixed message written
//                          to OUT_DIR/<alias>.mac for the members to reproduce), AES/GCM/NoPadding
//                          round trip
//   wrongpin               KeyStore.load with a wrong PIN must fail with a LoginException
//                          (FailedLoginException) caused by CKR_PIN_INCORRECT
//   mac OUT_DIR SUFFIX ALIAS...
//                          HmacSHA256 of the fixed message with each secret key ALIAS, written to
//                          OUT_DIR/<alias>.mac.SUFFIX (used with a config that names a member
//                          token directly, to check the replicas by function)
//   outage STATE_DIR       sign; ask the test script to kill the agent (STATE_DIR/killed),
//                          sign again (must fail); ask for a restart (STATE_DIR/restarted);
//                          then report what works: the same provider and keys, the same
//                          provider after KeyStore.load again, a new provider instance
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.Key;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import javax.crypto.Cipher;
import javax.crypto.Mac;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.security.auth.login.FailedLoginException;

public class HsmuxJavaClient {
  static final byte[] MESSAGE = "hsmux java client test message".getBytes(StandardCharsets.US_ASCII);

  static String cfg;
  static char[] pin;

  static void fail(String msg) {
    System.err.println("HsmuxJavaClient: FAIL: " + msg);
    System.exit(1);
  }

  static Provider newProvider() {
    Provider p = Security.getProvider("SunPKCS11").configure(cfg);
    Security.addProvider(p);
    return p;
  }

  static KeyStore load(Provider p, char[] pw) throws Exception {
    KeyStore ks = KeyStore.getInstance("PKCS11", p);
    ks.load(null, pw);
    return ks;
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 3) fail("usage: CONFIG PIN_FILE COMMAND [ARGS...]");
    cfg = args[0];
    pin = Files.readAllLines(Path.of(args[1])).get(0).trim().toCharArray();
    String cmd = args[2];
    List<String> rest = Arrays.asList(args).subList(3, args.length);
    switch (cmd) {
      case "list": list(rest); break;
      case "crypto": crypto(rest.get(0)); break;
      case "wrongpin": wrongPin(); break;
      case "outage": outage(rest.get(0)); break;
      case "mac": mac(rest.get(0), rest.get(1), rest.subList(2, rest.size())); break;
      default: fail("unknown command " + cmd);
    }
    System.out.println("HsmuxJavaClient " + cmd + ": OK");
  }

  static void list(List<String> expected) throws Exception {
    Provider p = newProvider();
    KeyStore ks = load(p, pin);
    List<String> aliases = Collections.list(ks.aliases());
    Collections.sort(aliases);
    for (String a : aliases) {
      String kind = ks.isKeyEntry(a) ? (ks.getCertificate(a) != null ? "PrivateKeyEntry" : "SecretKeyEntry")
                                     : "trustedCertEntry";
      System.out.println("alias " + a + " " + kind);
    }
    for (String e : expected) if (!aliases.contains(e)) fail("alias " + e + " not listed");
  }

  static byte[] sign(Provider p, String alg, PrivateKey key) throws Exception {
    Signature s = Signature.getInstance(alg, p);
    s.initSign(key);
    s.update(MESSAGE);
    return s.sign();
  }

  static void verifySoft(String alg, PublicKey pub, byte[] sig) throws Exception {
    Signature v = Signature.getInstance(alg);  // a software provider: the first that is not PKCS11
    for (Provider q : Security.getProviders()) {
      if (!q.getName().startsWith("SunPKCS11") && q.getService("Signature", alg) != null) {
        v = Signature.getInstance(alg, q);
        break;
      }
    }
    v.initVerify(pub);
    v.update(MESSAGE);
    if (!v.verify(sig)) fail(alg + " signature does not verify with the public key");
    System.out.println(alg + ": " + sig.length + "-byte signature verified by " + v.getProvider().getName());
  }

  static void crypto(String outDir) throws Exception {
    Provider p = newProvider();
    KeyStore ks = load(p, pin);

    // RSA (keytool -genkey -keyalg RSA) and EC (keytool -genkeypair -keyalg EC) entries.
    for (String[] e : new String[][] {{"openidm-localhost", "SHA256withRSA"}, {"selfservice", "SHA256withRSA"},
                                      {"openidm-ec", "SHA256withECDSA"}}) {
      PrivateKey k = (PrivateKey) ks.getKey(e[0], null);
      if (k == null) fail("no private key " + e[0]);
      Certificate c = ks.getCertificate(e[0]);
      if (c == null) fail("no certificate " + e[0]);
      byte[] sig = sign(p, e[1], k);
      Files.write(Path.of(outDir, e[0] + ".sig"), sig);
      System.out.print(e[0] + " ");
      verifySoft(e[1], c.getPublicKey(), sig);
      // Verification through the token too (C_VerifyInit with the certificate's public key).
      Signature v = Signature.getInstance(e[1], p);
      v.initVerify(c.getPublicKey());
      v.update(MESSAGE);
      if (!v.verify(sig)) fail(e[1] + " does not verify through the token");
    }

    // A key pair generated with KeyPairGenerator through the provider (token objects, by the
    // config's attributes), used at once.
    java.security.KeyPairGenerator kpg = java.security.KeyPairGenerator.getInstance("EC", p);
    kpg.initialize(new java.security.spec.ECGenParameterSpec("secp256r1"));
    java.security.KeyPair kp = kpg.generateKeyPair();
    System.out.print("KeyPairGenerator EC ");
    verifySoft("SHA256withECDSA", kp.getPublic(), sign(p, "SHA256withECDSA", kp.getPrivate()));

    // HmacSHA256 with the keytool -genseckey keys.
    for (String alias : new String[] {"openidm-sym-default", "openidm-selfservice-key",
                                      "openidm-jwtsessionhmac-key"}) {
      Key k = ks.getKey(alias, null);
      if (!(k instanceof SecretKey)) fail("no secret key " + alias);
      Mac m = Mac.getInstance("HmacSHA256", p);
      m.init(k);
      byte[] mac = m.doFinal(MESSAGE);
      Mac m2 = Mac.getInstance("HmacSHA256", p);
      m2.init(k);
      if (!Arrays.equals(mac, m2.doFinal(MESSAGE))) fail("HMAC not repeatable for " + alias);
      Files.write(Path.of(outDir, alias + ".mac"), mac);
      System.out.println("HmacSHA256 " + alias + " (" + k.getAlgorithm() + "): " + hex(mac));
    }

    // AES/GCM/NoPadding with the keytool -genseckey -keyalg AES key.
    SecretKey aes = (SecretKey) ks.getKey("openidm-aes", null);
    if (aes == null) fail("no secret key openidm-aes");
    byte[] iv = new byte[12];
    new SecureRandom().nextBytes(iv);
    byte[] aad = "hsmux-aad".getBytes(StandardCharsets.US_ASCII);
    Cipher enc = Cipher.getInstance("AES/GCM/NoPadding", p);
    enc.init(Cipher.ENCRYPT_MODE, aes, new GCMParameterSpec(128, iv));
    enc.updateAAD(aad);
    byte[] ct = enc.doFinal(MESSAGE);
    if (ct.length != MESSAGE.length + 16) fail("GCM ciphertext length " + ct.length);
    Cipher dec = Cipher.getInstance("AES/GCM/NoPadding", p);
    dec.init(Cipher.DECRYPT_MODE, aes, new GCMParameterSpec(128, iv));
    dec.updateAAD(aad);
    byte[] pt = dec.doFinal(ct);
    if (!Arrays.equals(pt, MESSAGE)) fail("AES/GCM round trip gives a different plaintext");
    // A flipped tag must be refused.
    ct[ct.length - 1] ^= 1;
    Cipher bad = Cipher.getInstance("AES/GCM/NoPadding", p);
    bad.init(Cipher.DECRYPT_MODE, aes, new GCMParameterSpec(128, iv));
    bad.updateAAD(aad);
    try {
      bad.doFinal(ct);
      fail("AES/GCM accepted a bad tag");
    } catch (javax.crypto.AEADBadTagException expected) {
      System.out.println("AES/GCM: bad tag refused with " + expected.getClass().getName());
    } catch (Exception other) {
      // SunPKCS11 maps CKR_ENCRYPTED_DATA_INVALID to AEADBadTagException; say what came instead.
      System.out.println("AES/GCM: bad tag refused with " + other);
    }
    System.out.println("AES/GCM/NoPadding: round trip OK (" + ct.length + " bytes)");
  }

  static void mac(String outDir, String suffix, List<String> aliases) throws Exception {
    Provider p = newProvider();
    KeyStore ks = load(p, pin);
    for (String alias : aliases) {
      Key k = ks.getKey(alias, null);
      if (!(k instanceof SecretKey)) fail("no secret key " + alias);
      Mac m = Mac.getInstance("HmacSHA256", p);
      m.init(k);
      Files.write(Path.of(outDir, alias + ".mac." + suffix), m.doFinal(MESSAGE));
    }
  }

  static void wrongPin() throws Exception {
    Provider p = newProvider();
    char[] wrong = "not-the-pin".toCharArray();
    try {
      load(p, wrong);
      fail("KeyStore.load with a wrong PIN succeeded");
    } catch (IOException e) {
      // JDK 17's P11KeyStore.engineLoad wraps the FailedLoginException that SunPKCS11.login
      // throws for CKR_PIN_INCORRECT: IOException("load failed") <- UnrecoverableKeyException
      // <- FailedLoginException <- PKCS11Exception(CKR_PIN_INCORRECT).
      System.out.println("KeyStore.load: " + e);
      FailedLoginException fle = null;
      for (Throwable c = e.getCause(); c != null; c = c.getCause()) {
        System.out.println("  caused by " + c);
        if (c instanceof FailedLoginException && fle == null) fle = (FailedLoginException) c;
      }
      if (fle == null) fail("no FailedLoginException (a LoginException) in the cause chain");
      Throwable pe = fle.getCause();
      if (pe == null || !String.valueOf(pe.getMessage()).contains("CKR_PIN_INCORRECT"))
        fail("FailedLoginException not caused by CKR_PIN_INCORRECT");
    }
    // The provider logs in as usual afterwards (the wrong PIN left no state behind).
    KeyStore ks = load(p, pin);
    System.out.println("KeyStore.load with the right PIN afterwards: " + ks.size() + " entries");
  }

  // --- agent outage --------------------------------------------------------------------------
  static void await(String stateDir, String name) throws Exception {
    File f = new File(stateDir, name);
    for (int i = 0; i < 1200 && !f.exists(); i++) Thread.sleep(100);
    if (!f.exists()) fail("the test script never wrote " + f);
  }

  static String attempt(String what, Provider p, PrivateKey k) {
    try {
      byte[] sig = sign(p, "SHA256withRSA", k);
      System.out.println("outage: " + what + ": OK (" + sig.length + "-byte signature)");
      return "ok";
    } catch (Throwable t) {
      StringBuilder sb = new StringBuilder(t.toString());
      for (Throwable c = t.getCause(); c != null; c = c.getCause()) sb.append(" <- ").append(c);
      System.out.println("outage: " + what + ": FAILED: " + sb);
      return sb.toString();
    }
  }

  static void outage(String stateDir) throws Exception {
    Provider p = newProvider();
    KeyStore ks = load(p, pin);
    PrivateKey k = (PrivateKey) ks.getKey("openidm-localhost", null);
    if (!"ok".equals(attempt("before the outage", p, k))) fail("signing before the outage");

    Files.writeString(Path.of(stateDir, "kill-agent"), "");
    await(stateDir, "killed");
    String during = attempt("agent down", p, k);
    if ("ok".equals(during)) fail("signing worked while no agent ran");
    // The module answers CKR_DEVICE_ERROR; SunPKCS11 then checks the token (the slot is
    // CKF_REMOVABLE_DEVICE: C_GetSlotInfo, then C_GetSessionInfo, which fails too), declares it
    // removed and says "Token has been removed"; with a non-removable slot it would pass the
    // PKCS11Exception(CKR_DEVICE_ERROR) on.
    if (!during.contains("CKR_DEVICE_ERROR") && !during.contains("Token has been removed"))
      fail("during the outage: expected CKR_DEVICE_ERROR or \"Token has been removed\"");

    Files.writeString(Path.of(stateDir, "start-agent"), "");
    await(stateDir, "restarted");
    List<String> results = new ArrayList<>();
    // 1. Same provider, same key object (old session and object handles).
    String same = attempt("after restart, same provider and key", p, k);
    results.add("same-key=" + ("ok".equals(same) ? "ok" : "failed"));
    // 2. Same provider, KeyStore.load again (log in again), fresh key lookup.
    String reload;
    try {
      KeyStore ks2 = load(p, pin);
      reload = attempt("after restart, same provider, KeyStore.load again",
                       p, (PrivateKey) ks2.getKey("openidm-localhost", null));
    } catch (Throwable t) {
      reload = t.toString();
      System.out.println("outage: after restart, same provider, KeyStore.load again: FAILED: " + t
          + (t.getCause() != null ? " <- " + t.getCause() : ""));
    }
    results.add("reload=" + ("ok".equals(reload) ? "ok" : "failed"));
    // 2b. SunPKCS11's token poller (removable slots) re-creates the token once C_GetSlotInfo says
    // it is present again; give it time, then KeyStore.load again on the same provider.
    String later = "not tried";
    for (int i = 0; i < 20 && !"ok".equals(later); i++) {
      Thread.sleep(500);
      try {
        KeyStore ks2 = load(p, pin);
        later = attempt("after restart + " + (i + 1) * 500 + " ms, same provider, KeyStore.load again",
                        p, (PrivateKey) ks2.getKey("openidm-localhost", null));
      } catch (Throwable t) {
        later = chain(t);
        if (i == 19) System.out.println("outage: same provider, KeyStore.load again, for 10 s: FAILED: " + later);
      }
    }
    results.add("reload-after-poll=" + ("ok".equals(later) ? "ok" : "failed"));
    // 3. A new provider instance from the same config (the JVM keeps the module loaded).
    String fresh;
    try {
      Provider p2 = newProvider();
      KeyStore ks3 = load(p2, pin);
      fresh = attempt("after restart, new provider instance", p2,
                      (PrivateKey) ks3.getKey("openidm-localhost", null));
    } catch (Throwable t) {
      fresh = chain(t);
      System.out.println("outage: after restart, new provider instance: FAILED: " + fresh);
    }
    results.add("new-provider=" + ("ok".equals(fresh) ? "ok" : "failed"));
    // 4. The original key object once more, after the re-login.
    String again = attempt("after restart and re-login, the original key object", p, k);
    results.add("same-key-after-relogin=" + ("ok".equals(again) ? "ok" : "failed"));
    Files.writeString(Path.of(stateDir, "result"), String.join(" ", results) + "\n");
    System.out.println("outage: " + String.join(" ", results));
    // What an application can rely on (README, "Use it from Java"): SunPKCS11 treats the outage
    // as a token removal; once its token poller sees the token again (about 2 s), a new
    // KeyStore.load on the same provider works, and so does a new provider instance at once.
    // Key objects from before the outage stay invalid ("Token has been removed"), as with a
    // smart card pulled and put back.
    if (!"ok".equals(later)) fail("KeyStore.load on the same provider never worked again");
    if (!"ok".equals(fresh)) fail("a new provider instance did not work after the agent came back");
  }

  static String chain(Throwable t) {
    StringBuilder sb = new StringBuilder(t.toString());
    for (Throwable c = t.getCause(); c != null; c = c.getCause()) sb.append(" <- ").append(c);
    return sb.toString();
  }

  static String hex(byte[] b) {
    StringBuilder sb = new StringBuilder();
    for (byte x : b) sb.append(String.format("%02x", x));
    return sb.toString();
  }
}
