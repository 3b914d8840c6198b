/**
 * Ed25519 signatures over `domain tag + chain id + exact bytes` (consortium/crypto/signing.py),
 * with verdicts EQUAL to the node's, which verifies with libsodium's `crypto_sign_open`:
 *
 * - strict RFC 8032 through @noble/ed25519 with `zip215: false`: canonical encodings of A and R
 *   (y < p, no "negative zero"), S < L, small-order A refused;
 * - plus what libsodium refuses beyond that, as explicit checks: R of small order (or any
 *   encoding of a small-order point) and A of small order by libsodium's own list of encodings,
 *   and the COFACTORLESS equation: the encoding of [S]B - [H(R,A,M)]A must equal R's bytes
 *   (noble's strict mode checks [8]([S]B - R - [k]A) = 0, which also accepts R plus a small-order
 *   component, and mixed-order keys with any k).
 *
 * tests/vectors/shared.json holds cases where the two rules differ, with libsodium's verdicts.
 */

import { randomBytes } from "node:crypto";
import * as ed from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2";
import { bytesToBigLE, concatBytes, equalBytes, utf8 } from "./bytes.js";

// noble's slot wants a result on a plain ArrayBuffer; @noble/hashes returns one (typed more loosely).
ed.hashes.sha512 = (message) => Uint8Array.from(sha512(message));

export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;
export const SEED_BYTES = 32;

/** What a signature is for: the tag prefixed to every signed message (signing.py `Domain`). */
export const Domain = {
  TX: utf8("consortium/v1/tx\x00"),
  HANDSHAKE: utf8("consortium/v1/handshake\x00"),
  PBFT: utf8("consortium/v1/pbft\x00"),
  BLOCK: utf8("consortium/v1/block\x00"),
  RAFT_ENTRY: utf8("consortium/v1/raft-entry\x00"),
  CONFIG: utf8("consortium/v1/config\x00"),
  READ: utf8("consortium/v1/read\x00"),
  CLIENT_CHANGE: utf8("consortium/v1/client-change\x00"),
  MAINTENANCE: utf8("consortium/v1/maintenance\x00"),
} as const;
export type DomainName = keyof typeof Domain;

/** The bytes a signature covers: domain tag + chain id + body. */
export function signedMessage(domain: DomainName, chainId: Uint8Array, body: Uint8Array): Uint8Array {
  return concatBytes(Domain[domain], chainId, body);
}

const P = 2n ** 255n - 19n;
const L = 2n ** 252n + 27742317777372353535851937790883648493n;

// libsodium's ge25519_has_small_order list: the y-coordinates (sign bit ignored) of the points
// of order dividing 8, and the non-canonical y = p and y = p + 1 (0 and 1 again).
const SMALL_ORDER_Y = [0n, 1n, 2707385501144840649318225287225658788936804267575313519463743609750303402022n,
  55188659117513257062467267217118295137698188065244968500265048394206261417927n, P - 1n, P, P + 1n];

function yOf(encoded: Uint8Array): bigint {
  return bytesToBigLE(encoded) & ((1n << 255n) - 1n);
}

/** libsodium ge25519_is_canonical: the y-coordinate (sign bit aside) is below p. */
export function isCanonicalEncoding(encoded: Uint8Array): boolean {
  return encoded.length === 32 && yOf(encoded) < P;
}

/** libsodium ge25519_has_small_order: any encoding of a point of order 1, 2, 4 or 8. */
export function hasSmallOrder(encoded: Uint8Array): boolean {
  return encoded.length === 32 && SMALL_ORDER_Y.includes(yOf(encoded));
}

/**
 * Whether `raw` is a public key the node enrols (keys.py `validate_public_key`, libsodium's
 * crypto_core_ed25519_is_valid_point): 32 bytes, canonical, on the curve, not of small order,
 * in the prime-order subgroup.
 */
export function isValidPublicKey(raw: Uint8Array): boolean {
  if (raw.length !== PUBLIC_KEY_BYTES || !isCanonicalEncoding(raw) || hasSmallOrder(raw)) return false;
  let point: ed.Point;
  try {
    point = ed.Point.fromBytes(raw, true);
  } catch {
    return false;
  }
  return point.isTorsionFree();
}

/**
 * Verify `signature` over the exact `message` bytes under `publicKey` exactly as libsodium's
 * crypto_sign_open does; false on any malformed input, never throws.
 */
export function verifyMessage(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== SIGNATURE_BYTES || publicKey.length !== PUBLIC_KEY_BYTES) return false;
  const r = signature.subarray(0, 32);
  const s = bytesToBigLE(signature.subarray(32));
  if (s >= L) return false; // libsodium: sc25519_is_canonical(S)
  if (hasSmallOrder(r)) return false; // libsodium: ge25519_has_small_order(R)
  if (!isCanonicalEncoding(publicKey) || hasSmallOrder(publicKey)) return false;
  let A: ed.Point;
  try {
    A = ed.Point.fromBytes(publicKey, false);
  } catch {
    return false;
  }
  // Strict RFC 8032 (noble, zip215: false).
  try {
    if (!ed.verify(signature, message, publicKey, { zip215: false })) return false;
  } catch {
    return false;
  }
  // libsodium's equation: cofactorless, R compared byte for byte with the canonical encoding.
  const k = bytesToBigLE(sha512(concatBytes(r, publicKey, message))) % L;
  const check = ed.Point.BASE.multiply(s, false).subtract(A.multiply(k, false));
  return equalBytes(check.toBytes(), r);
}

/** Verify a signature made for `domain` on the chain `chainId` over `body` (signing.py). */
export function verify(
  publicKey: Uint8Array,
  domain: DomainName,
  chainId: Uint8Array,
  body: Uint8Array,
  signature: Uint8Array,
): boolean {
  return verifyMessage(publicKey, signedMessage(domain, chainId, body), signature);
}

/** A signing key: a 32-byte Ed25519 seed and its public key. */
export interface KeyPair {
  readonly seed: Uint8Array;
  readonly publicKey: Uint8Array;
}

/** The key pair of a 32-byte seed (keys.py `KeyPair.from_seed`). */
export function keyPairFromSeed(seed: Uint8Array): KeyPair {
  if (seed.length !== SEED_BYTES) throw new RangeError(`an Ed25519 seed is ${SEED_BYTES} bytes`);
  return { seed: Uint8Array.from(seed), publicKey: ed.getPublicKey(seed) };
}

/** A fresh random key pair. */
export function generateKeyPair(): KeyPair {
  return keyPairFromSeed(new Uint8Array(randomBytes(SEED_BYTES)));
}

/** Sign `body` for `domain` on `chainId` (deterministic: the node's signer gives the same bytes). */
export function sign(keys: KeyPair, domain: DomainName, chainId: Uint8Array, body: Uint8Array): Uint8Array {
  return ed.sign(signedMessage(domain, chainId, body), keys.seed);
}
