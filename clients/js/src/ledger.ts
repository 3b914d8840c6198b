/**
 * The ledger's structures a client checks (consortium/ledger/block.py, certificates.py):
 * block headers, receipts, block signatures, as the canonical arrays the node hashes and signs.
 */

import { asBytes, asInt, asList, asStr, pack, pyRepr, WireFormatError, type MsgValue } from "./codec.js";
import { sha256 } from "./hash.js";

/** A block header (block.py `BlockHeader`). Block hash = SHA-256 of its canonical encoding. */
export interface BlockHeader {
  readonly chainId: Uint8Array;
  readonly height: number | bigint;
  readonly prevHash: Uint8Array;
  readonly timestampMs: number | bigint;
  readonly txRoot: Uint8Array;
  readonly stateRoot: Uint8Array;
  readonly receiptsRoot: Uint8Array;
  /** ["pbft", seq, proposed_ms] or ["raft", term, index, proposed_ms] */
  readonly consensus: ReadonlyArray<string | number | bigint>;
}

export function headerToArray(h: BlockHeader): MsgValue[] {
  return [h.chainId, h.height, h.prevHash, h.timestampMs, h.txRoot, h.stateRoot, h.receiptsRoot, [...h.consensus]];
}

export function encodeHeader(h: BlockHeader): Uint8Array {
  return pack(headerToArray(h));
}

export function headerHash(h: BlockHeader): Uint8Array {
  return sha256(encodeHeader(h));
}

/** block.py `BlockHeader.from_array`, with its messages. */
export function headerFromArray(v: MsgValue | undefined): BlockHeader {
  const a = asList(v, 8, "block header");
  const cons = asList(a[7], null, "consensus");
  if (!cons.length || !cons.every((x) => typeof x === "string" || typeof x === "number" || typeof x === "bigint")) {
    throw new WireFormatError("consensus: expected a mode and integers");
  }
  asStr(cons[0], "consensus mode", 16);
  return {
    chainId: asBytes(a[0], "chain_id", 32),
    height: asInt(a[1], "height"),
    prevHash: asBytes(a[2], "prev_hash", 32),
    timestampMs: asInt(a[3], "timestamp_ms"),
    txRoot: asBytes(a[4], "tx_root", 32),
    stateRoot: asBytes(a[5], "state_root", 32),
    receiptsRoot: asBytes(a[6], "receipts_root", 32),
    consensus: cons as Array<string | number | bigint>,
  };
}

/** The deterministic result of one transaction in one block (block.py `Receipt`). */
export interface Receipt {
  readonly txId: Uint8Array;
  readonly status: "ok" | "rejected";
  /** "" when ok; duplicate | expired | ... */
  readonly reason: string;
  /** One per op: get -> value, del -> existed, ... */
  readonly results: ReadonlyArray<Uint8Array | boolean | null>;
  readonly height: number | bigint;
  readonly index: number | bigint;
}

export function receiptToArray(r: Receipt): MsgValue[] {
  return [r.txId, r.status, r.reason, [...r.results], r.height, r.index];
}

export function encodeReceipt(r: Receipt): Uint8Array {
  return pack(receiptToArray(r));
}

/** block.py `Receipt.from_array`, with its messages. */
export function receiptFromArray(v: MsgValue | undefined): Receipt {
  const a = asList(v, 6, "receipt");
  const results = asList(a[3], null, "results");
  for (const r of results) {
    if (!(r === null || r instanceof Uint8Array || typeof r === "boolean")) {
      throw new WireFormatError("receipt results: expected bytes, bool or nil");
    }
  }
  const status = asStr(a[1], "status", 16);
  if (status !== "ok" && status !== "rejected") throw new WireFormatError(`receipt status: ${pyRepr(status)}`);
  return {
    txId: asBytes(a[0], "tx_id", 32),
    status,
    reason: asStr(a[2], "reason", 64),
    results: results as Array<Uint8Array | boolean | null>,
    height: asInt(a[4], "height"),
    index: asInt(a[5], "index"),
  };
}

/** A block signature or other vote: the exact signed body and its signature. */
export interface SignedVote {
  readonly body: Uint8Array;
  readonly signature: Uint8Array;
}

export const VOTE_BODY_BYTES_MAX = 256;

/** certificates.py `SignedVote.from_array`. */
export function voteFromArray(v: MsgValue | undefined): SignedVote {
  const a = asList(v, 2, "signed vote");
  return {
    body: asBytes(a[0], "vote body", null, VOTE_BODY_BYTES_MAX),
    signature: asBytes(a[1], "vote signature", 64),
  };
}

/** The body a member signs (Domain BLOCK) to vouch for a header: ["block", height, hash, signer]. */
export function blockSignatureBody(height: number | bigint, blockHash: Uint8Array, signer: number): Uint8Array {
  return pack(["block", height, blockHash, signer]);
}
