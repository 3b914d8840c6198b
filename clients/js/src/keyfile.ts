/**
 * Client key files as `consortium init` writes them (net/clients/<name>.pem): PKCS#8 PEM
 * Ed25519 keys, mode 0600, optionally passphrase-protected (consortium/crypto/keys.py). Node only.
 */

import { createPrivateKey } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { keyPairFromSeed, type KeyPair } from "./ed25519.js";

/** A key file that cannot be used; the message says what to do. */
export class KeyFileError extends Error {
  override name = "KeyFileError";
}

/** Load a PKCS#8 PEM Ed25519 key; refuses a file others can read, as the Python client does. */
export async function loadKeyFile(path: string, passphrase?: string): Promise<KeyPair> {
  let pem: Buffer;
  try {
    pem = await readFile(path);
  } catch (exc) {
    throw new KeyFileError(`${path}: cannot read key file: ${(exc as Error).message}`);
  }
  const mode = (await stat(path)).mode & 0o777;
  if (mode & 0o077) {
    throw new KeyFileError(`${path}: key file is readable by others (mode ${mode.toString(8)}); run chmod 600 ${path}`);
  }
  let jwk: { kty?: string; crv?: string; d?: string };
  try {
    const key = createPrivateKey(passphrase === undefined ? { key: pem } : { key: pem, passphrase });
    jwk = key.export({ format: "jwk" }) as typeof jwk;
  } catch (exc) {
    throw new KeyFileError(`${path}: not a usable PKCS#8 PEM private key: ${(exc as Error).message}`);
  }
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.d !== "string") {
    throw new KeyFileError(`${path}: not an Ed25519 key`);
  }
  return keyPairFromSeed(new Uint8Array(Buffer.from(jwk.d, "base64url")));
}
