/**
 * Client transactions, built and signed exactly as consortium/ledger/tx.py `Transaction.create`:
 *
 *     body      = canonical msgpack [chain_id, client_key, nonce, expiry_ms, [op, ...]]
 *     signature = Ed25519 over "consortium/v1/tx\0" + chain_id + body
 *     id        = SHA-256(body)   (the unsigned bytes: known before submitting, retries are safe)
 *     wire form = canonical msgpack [body, signature]
 *
 * Same key seed, chain id, nonce, expiry and operations: the same bytes, id and signature as
 * the Python client (Ed25519 is deterministic).
 */

import { randomBytes } from "node:crypto";
import { pack, type MsgValue } from "./codec.js";
import { sign, type KeyPair } from "./ed25519.js";
import { sha256 } from "./hash.js";

export const NONCE_BYTES_MAX = 32;

/** One operation of the default key-value application. */
export type Op =
  | { readonly op: "put"; readonly key: Uint8Array; readonly value: Uint8Array }
  | { readonly op: "del"; readonly key: Uint8Array }
  | { readonly op: "cas"; readonly key: Uint8Array; readonly expected: Uint8Array | null; readonly new: Uint8Array | null }
  | { readonly op: "get"; readonly key: Uint8Array };

export const put = (key: Uint8Array, value: Uint8Array): Op => ({ op: "put", key, value });
export const del = (key: Uint8Array): Op => ({ op: "del", key });
/** Set `key` to `next` (or remove it, if null) only if its value is `expected` (null: absent). */
export const cas = (key: Uint8Array, expected: Uint8Array | null, next: Uint8Array | null): Op => ({
  op: "cas",
  key,
  expected,
  new: next,
});
export const get = (key: Uint8Array): Op => ({ op: "get", key });

/** The array an operation is encoded as (tx.py `op_to_array`). */
export function opToArray(op: Op): MsgValue[] {
  switch (op.op) {
    case "put":
      return ["put", op.key, op.value];
    case "del":
      return ["del", op.key];
    case "cas":
      return ["cas", op.key, op.expected, op.new];
    case "get":
      return ["get", op.key];
  }
}

export interface Transaction {
  /** Canonical encoding of the unsigned fields: what is hashed and signed. */
  readonly body: Uint8Array;
  readonly signature: Uint8Array;
  /** SHA-256 of body. */
  readonly id: Uint8Array;
  readonly chainId: Uint8Array;
  readonly clientKey: Uint8Array;
  readonly nonce: Uint8Array;
  readonly expiryMs: number | bigint;
  readonly ops: readonly Op[];
}

/**
 * Build and sign a transaction (tx.py `Transaction.create`). `expiryMs`: wall-clock
 * milliseconds after which members refuse it; `nonce`: up to 32 bytes, any value — a fresh
 * random one makes a new transaction, the same one (same everything) the same id.
 */
export function createTransaction(
  keys: KeyPair,
  chainId: Uint8Array,
  nonce: Uint8Array,
  expiryMs: number | bigint,
  ops: readonly Op[],
): Transaction {
  if (nonce.length > NONCE_BYTES_MAX) throw new RangeError(`a nonce is at most ${NONCE_BYTES_MAX} bytes`);
  const body = pack([chainId, keys.publicKey, nonce, expiryMs, ops.map(opToArray)]);
  const signature = sign(keys, "TX", chainId, body);
  return {
    body,
    signature,
    id: sha256(body),
    chainId,
    clientKey: keys.publicKey,
    nonce,
    expiryMs,
    ops: [...ops],
  };
}

/** The wire form: canonical msgpack [body, signature] (what the gateway takes, base64). */
export function encodeTransaction(tx: Transaction): Uint8Array {
  return pack([tx.body, tx.signature]);
}

/** A fresh random nonce (16 bytes, as the Python client draws). */
export function randomNonce(): Uint8Array {
  return new Uint8Array(randomBytes(16));
}
