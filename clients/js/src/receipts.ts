/**
 * Receipt documents (consortium/protocol/receipts.py; docs/client.md "Receipt documents"): a
 * transaction's receipt with everything needed to check it offline against the genesis file:
 *
 *     {"format": "consortium-receipt/1", "chain_id", "tx_id", "status", "reason", "height",
 *      "index", "block_hash",                        <- claims, checked against the bytes
 *      "receipt", "proof", "tree_size", "header",   <- what proves it
 *      "block_signatures": [{"signer", "body", "signature"}, ...]}
 *
 * accepted when the header is for this genesis' chain and mode, the receipt is in the header's
 * receipts tree, and enough DISTINCT genesis members signed the header's hash: f+1 in pbft, 1
 * in raft. `dumps` writes the JSON byte for byte as the Python client does; `loads` and
 * `verifyReceipt` refuse what the Python refuses, with the same sentences.
 */

import { equalBytes, fromHex, toHex } from "./bytes.js";
import { asList, pyRepr, unpackCanonical, WireFormatError, type MsgValue } from "./codec.js";
import { verify } from "./ed25519.js";
import type { Genesis } from "./genesis.js";
import type { Bundle } from "./bundle.js";
import {
  encodeHeader,
  encodeReceipt,
  headerFromArray,
  headerHash,
  receiptFromArray,
  voteFromArray,
  VOTE_BODY_BYTES_MAX,
  type BlockHeader,
  type Receipt,
  type SignedVote,
} from "./ledger.js";
import { verifyInclusion } from "./merkle.js";

export const FORMAT = "consortium-receipt/1";
export const PROOF_HASHES_MAX = 64;
export const SIGNATURES_MAX = 1024;
export const DOCUMENT_BYTES_MAX = 1 << 20;
const KEYS = [
  "format",
  "chain_id",
  "tx_id",
  "status",
  "reason",
  "height",
  "index",
  "block_hash",
  "receipt",
  "proof",
  "tree_size",
  "header",
  "block_signatures",
] as const;

/** A receipt document that cannot be read (not what it claims, or not a document). */
export class ReceiptFormatError extends Error {
  override name = "ReceiptFormatError";
}

/** Distinct member block signatures a receipt needs: f+1 in pbft, 1 in raft. */
export function signaturesNeeded(genesis: Genesis): number {
  return genesis.mode === "pbft" ? genesis.f + 1 : 1;
}

/** A receipt, its inclusion proof, its block header and member signatures over it. */
export interface ReceiptProof {
  readonly receipt: Receipt;
  readonly proof: readonly Uint8Array[];
  readonly treeSize: number | bigint;
  readonly header: BlockHeader;
  readonly signatures: readonly SignedVote[];
}

/** A ReceiptProof from verified bundles that agree on the receipt and block (client/receipts.py). */
export function fromBundles(bundles: readonly Bundle[]): ReceiptProof {
  const first = bundles[0];
  if (first === undefined) throw new RangeError("no bundles");
  return {
    receipt: first.receipt,
    proof: [...first.proof],
    treeSize: first.treeSize,
    header: first.header,
    signatures: bundles.map((b) => b.signature),
  };
}

/** The member indices the signature bodies name (unchecked; -1 when unreadable). */
export function signersOf(proof: ReceiptProof): number[] {
  return proof.signatures.map((vote) => {
    try {
      const signer = asList(unpackCanonical(vote.body), 4, "block signature")[3];
      return typeof signer === "number" ? signer : -1;
    } catch (exc) {
      if (exc instanceof WireFormatError) return -1;
      throw exc;
    }
  });
}

type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** The JSON document, as an object with receipts.py's key order. */
export function toDocument(proof: ReceiptProof, genesis: Genesis): { [key: string]: JsonValue } {
  const names = new Map(genesis.members.map((m) => [m.index, m.name]));
  const r = proof.receipt;
  const signed = signersOf(proof).map((s, i) => [s, proof.signatures[i]!] as const);
  signed.sort((a, b) => a[0] - b[0]); // stable, as Python's sorted
  return {
    format: FORMAT,
    chain_id: toHex(proof.header.chainId),
    tx_id: toHex(r.txId),
    status: r.status,
    reason: r.reason,
    height: Number(r.height),
    index: Number(r.index),
    block_hash: toHex(headerHash(proof.header)),
    receipt: toHex(encodeReceipt(r)),
    proof: proof.proof.map(toHex),
    tree_size: Number(proof.treeSize),
    header: toHex(encodeHeader(proof.header)),
    block_signatures: signed.map(([s, v]) => ({
      signer: names.get(s) ?? "?",
      body: toHex(v.body),
      signature: toHex(v.signature),
    })),
  };
}

/** Python's `json.dumps(value, indent=2)`: JSON.stringify's layout, non-ASCII escaped. */
export function pythonJson(value: JsonValue): string {
  return JSON.stringify(value, null, 2).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

/** The document's text, exactly as receipts.py `ReceiptProof.dumps` writes it. */
export function dumps(proof: ReceiptProof, genesis: Genesis): string {
  return pythonJson(toDocument(proof, genesis)) + "\n";
}

function isObject(v: unknown): v is { [key: string]: JsonValue } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function hexField(doc: { [key: string]: JsonValue }, key: string, size: number | null = null): Uint8Array {
  const value = doc[key];
  let raw: Uint8Array;
  try {
    if (typeof value !== "string") throw new TypeError();
    raw = fromHex(value);
  } catch {
    throw new ReceiptFormatError(`'${key}' must be a hex string`);
  }
  if (size !== null && raw.length !== size) throw new ReceiptFormatError(`'${key}' must be ${size} bytes (${2 * size} hex digits)`);
  return raw;
}

/** Python's `a != b` for a JSON value and a claim (a string or an integer). */
function differs(value: JsonValue | undefined, actual: string | number | bigint): boolean {
  if (typeof actual === "string") return value !== actual;
  if (typeof value === "boolean") return BigInt(value ? 1 : 0) !== BigInt(actual);
  if (typeof value !== "number" || !Number.isFinite(value)) return true;
  return Number.isInteger(value) ? BigInt(value) !== BigInt(actual) : true;
}

/**
 * Read a receipt document (receipts.py `loads`); ReceiptFormatError says what is wrong. It
 * does not verify (verifyReceipt does) but refuses a document whose claims differ from its bytes.
 */
export function loads(text: string): ReceiptProof {
  if (text.length > DOCUMENT_BYTES_MAX && [...text].length > DOCUMENT_BYTES_MAX) {
    throw new ReceiptFormatError(`larger than ${DOCUMENT_BYTES_MAX} bytes: not a receipt document`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (exc) {
    throw new ReceiptFormatError(`not JSON: ${(exc as Error).message}`);
  }
  if (!isObject(doc)) throw new ReceiptFormatError("not a receipt document (expected a JSON object)");
  if (doc["format"] !== FORMAT) {
    throw new ReceiptFormatError(`'format' must be ${pyRepr(FORMAT)}, found ${pyRepr(doc["format"])}`);
  }
  for (const key of KEYS) if (!(key in doc)) throw new ReceiptFormatError(`missing '${key}'`);
  const unknown = Object.keys(doc)
    .filter((k) => !(KEYS as readonly string[]).includes(k))
    .sort();
  if (unknown.length) throw new ReceiptFormatError(`unknown key '${unknown[0]}'`);
  let receipt: Receipt;
  const receiptBytes = hexField(doc, "receipt");
  try {
    receipt = receiptFromArray(unpackCanonical(receiptBytes));
  } catch (exc) {
    if (exc instanceof WireFormatError) throw new ReceiptFormatError(`'receipt' does not decode: ${exc.message}`);
    throw exc;
  }
  let header: BlockHeader;
  const headerBytes = hexField(doc, "header");
  try {
    header = headerFromArray(unpackCanonical(headerBytes));
  } catch (exc) {
    if (exc instanceof WireFormatError) throw new ReceiptFormatError(`'header' does not decode: ${exc.message}`);
    throw exc;
  }
  const proofList = doc["proof"];
  if (!Array.isArray(proofList) || proofList.length > PROOF_HASHES_MAX) {
    throw new ReceiptFormatError(`'proof' must be a list of at most ${PROOF_HASHES_MAX} hashes`);
  }
  const proof = proofList.map((p) => hexField({ proof: p }, "proof", 32));
  const sigList = doc["block_signatures"];
  if (!Array.isArray(sigList) || sigList.length > SIGNATURES_MAX) {
    throw new ReceiptFormatError("'block_signatures' must be a list");
  }
  const signatures = sigList.map((item, i) => {
    if (!isObject(item) || !("body" in item) || !("signature" in item)) {
      throw new ReceiptFormatError(`block_signatures[${i}]: expected body and signature`);
    }
    try {
      return voteFromArray([hexField(item, "body"), hexField(item, "signature", 64)]);
    } catch (exc) {
      if (exc instanceof WireFormatError || exc instanceof ReceiptFormatError) {
        throw new ReceiptFormatError(`block_signatures[${i}]: ${exc.message}`);
      }
      throw exc;
    }
  });
  const treeSize = doc["tree_size"];
  if (typeof treeSize !== "number" || !Number.isInteger(treeSize) || treeSize < 0) {
    throw new ReceiptFormatError("'tree_size' must be a non-negative integer");
  }
  const result: ReceiptProof = { receipt, proof, treeSize, header, signatures };
  const claims: Array<[string, string | number | bigint]> = [
    ["chain_id", toHex(header.chainId)],
    ["tx_id", toHex(receipt.txId)],
    ["status", receipt.status],
    ["reason", receipt.reason],
    ["height", receipt.height],
    ["index", receipt.index],
    ["block_hash", toHex(headerHash(header))],
  ];
  for (const [key, actual] of claims) {
    if (differs(doc[key], actual)) {
      throw new ReceiptFormatError(`'${key}' says ${pyRepr(doc[key])} but the receipt and header bytes say ${pyRepr(actual)}`);
    }
  }
  return result;
}

/** Python's str(x)[:16] quoted with repr, for "expected a block vote, got ..." */
function pyStrHead(v: MsgValue | undefined): string {
  const s = typeof v === "string" ? v : pyRepr(v);
  return pyRepr([...s].slice(0, 16).join(""));
}

/** Python equality of a decoded value and an expected integer or bytes (True == 1 there). */
function pyEquals(v: MsgValue | undefined, expected: number | bigint | Uint8Array): boolean {
  if (expected instanceof Uint8Array) return v instanceof Uint8Array && equalBytes(v, expected);
  if (typeof v === "boolean") return BigInt(v ? 1 : 0) === BigInt(expected);
  return (typeof v === "number" || typeof v === "bigint") && BigInt(v) === BigInt(expected);
}

/** certificates.py `verify_block_signatures`: f+1 (or `needed`) distinct members signed it. */
export function verifyBlockSignatures(
  votes: readonly SignedVote[],
  height: number | bigint,
  blockHash: Uint8Array,
  genesis: Genesis,
  needed: number,
): string | null {
  const signers = new Set<number>();
  for (const [i, vote] of votes.entries()) {
    let a: MsgValue[];
    try {
      a = asList(unpackCanonical(vote.body, VOTE_BODY_BYTES_MAX), 4, "block");
      if (a[0] !== "block") throw new WireFormatError(`expected a block vote, got ${pyStrHead(a[0])}`);
    } catch (exc) {
      if (exc instanceof WireFormatError) return `block vote ${i}: ${exc.message}`;
      throw exc;
    }
    if (!pyEquals(a[1], height) || !pyEquals(a[2], blockHash)) {
      return `block vote ${i} is not for this (height, block hash)`;
    }
    const signer = a[3];
    if (typeof signer !== "number" || !(signer >= 0 && signer < genesis.n)) {
      return `block vote ${i}: signer ${pyRepr(signer)} is not a member`;
    }
    const member = genesis.members[signer]!;
    if (signers.has(signer)) return `block vote ${i}: member ${member.name} counted twice`;
    if (!verify(member.publicKey, "BLOCK", genesis.chainId, vote.body, vote.signature)) {
      return `block vote ${i}: bad signature by ${member.name}`;
    }
    signers.add(signer);
  }
  if (signers.size < needed) return `${signers.size} distinct block signatures, ${needed} needed`;
  return null;
}

/**
 * What is wrong with `proof` against `genesis`, or null when it proves its receipt
 * (receipts.py `verify_receipt`): this chain and mode, the receipt the leaf at its index of
 * a tree of tree_size leaves with the header's receipts_root, and signaturesNeeded distinct
 * genesis members' signatures over ["block", height, block hash, signer].
 */
export function verifyReceipt(proof: ReceiptProof, genesis: Genesis): string | null {
  const { header, receipt } = proof;
  if (!equalBytes(header.chainId, genesis.chainId)) {
    return (
      `the receipt is for another network: chain id ${toHex(header.chainId).slice(0, 16)}…, ` +
      `this genesis is ${toHex(genesis.chainId).slice(0, 16)}…`
    );
  }
  if (header.consensus[0] !== genesis.mode) {
    return `the header is a ${String(header.consensus[0])} block; this genesis is ${genesis.mode}`;
  }
  if (BigInt(receipt.height) !== BigInt(header.height)) {
    return `the receipt says height ${receipt.height}, the header ${header.height}`;
  }
  if (!(BigInt(receipt.index) >= 0n && BigInt(receipt.index) < BigInt(proof.treeSize))) {
    return `receipt index ${receipt.index} is outside a tree of ${proof.treeSize} receipts`;
  }
  if (!verifyInclusion(encodeReceipt(receipt), receipt.index, proof.treeSize, proof.proof, header.receiptsRoot)) {
    return "the Merkle proof does not lead from the receipt to the header's receipts root: the receipt is not in this block";
  }
  const problem = verifyBlockSignatures(proof.signatures, header.height, headerHash(header), genesis, signaturesNeeded(genesis));
  return problem === null ? null : `block signatures: ${problem}`;
}

/** The verdict on a document's text: read it, then verify it (`consortium tx verify-receipt`). */
export type DocumentVerdict =
  | { readonly valid: true; readonly proof: ReceiptProof }
  | { readonly valid: false; readonly stage: "load" | "verify"; readonly error: string };

export function verifyReceiptDocument(text: string, genesis: Genesis): DocumentVerdict {
  let proof: ReceiptProof;
  try {
    proof = loads(text);
  } catch (exc) {
    if (exc instanceof ReceiptFormatError) return { valid: false, stage: "load", error: exc.message };
    throw exc;
  }
  const problem = verifyReceipt(proof, genesis);
  return problem === null ? { valid: true, proof } : { valid: false, stage: "verify", error: problem };
}
