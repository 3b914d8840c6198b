/** SHA-256 digests: every hash in the ledger and the protocols is SHA-256 over canonical bytes. */

import { sha256 as nobleSha256 } from "@noble/hashes/sha2";
import { pack, type MsgValue } from "./codec.js";

export const DIGEST_BYTES = 32;

export function sha256(data: Uint8Array): Uint8Array {
  return nobleSha256(data);
}

/** SHA-256 of the concatenation of `parts`. */
export function sha256Concat(...parts: Uint8Array[]): Uint8Array {
  const h = nobleSha256.create();
  for (const p of parts) h.update(p);
  return h.digest();
}

/** SHA-256 of the canonical encoding of `value` (codec.py `digest_of`). */
export function digestOf(value: MsgValue): Uint8Array {
  return nobleSha256(pack(value));
}
