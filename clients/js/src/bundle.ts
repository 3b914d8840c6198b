/**
 * Receipt bundles: what one member sends to prove a receipt (consortium/protocol/verify.py):
 *
 *     [receipt, proof, tree_size, header, [block signature body, signature]]
 *
 * The receipt, its RFC 6962 inclusion proof against the header's receipts_root (leaf = the
 * receipt's canonical encoding), the size of that tree, the block header, and that member's
 * signature over ["block", height, SHA-256(header), signer] in the BLOCK domain. `verifyBundle`
 * makes verify.py `verify_bundle`'s checks, in its order, with its messages.
 */

import { equalBytes, toHex } from "./bytes.js";
import { asBytes, asInt, asList, pack, unpackCanonical, WireFormatError, type MsgValue } from "./codec.js";
import { verify } from "./ed25519.js";
import type { Genesis } from "./genesis.js";
import {
  blockSignatureBody,
  encodeReceipt,
  headerFromArray,
  headerHash,
  headerToArray,
  receiptFromArray,
  receiptToArray,
  voteFromArray,
  VOTE_BODY_BYTES_MAX,
  type BlockHeader,
  type Receipt,
  type SignedVote,
} from "./ledger.js";
import { verifyInclusion } from "./merkle.js";

export const PROOF_HASHES_MAX = 64;

export interface Bundle {
  readonly receipt: Receipt;
  readonly proof: readonly Uint8Array[];
  readonly treeSize: number | bigint;
  readonly header: BlockHeader;
  readonly signature: SignedVote;
}

/** verify.py `Bundle.from_array`. */
export function bundleFromArray(v: MsgValue | undefined): Bundle {
  const a = asList(v, 5, "bundle");
  const proof = asList(a[1], null, "proof");
  if (proof.length > PROOF_HASHES_MAX) throw new WireFormatError("proof: too long");
  return {
    receipt: receiptFromArray(a[0]),
    proof: proof.map((p) => asBytes(p, "proof hash", 32)),
    treeSize: asInt(a[2], "tree_size"),
    header: headerFromArray(a[3]),
    signature: voteFromArray(a[4]),
  };
}

/** A bundle from its canonical bytes (what the gateway sends, base64); WireFormatError if not. */
export function decodeBundle(data: Uint8Array): Bundle {
  return bundleFromArray(unpackCanonical(data));
}

export function encodeBundle(b: Bundle): Uint8Array {
  return pack([
    receiptToArray(b.receipt),
    [...b.proof],
    b.treeSize,
    headerToArray(b.header),
    [b.signature.body, b.signature.signature],
  ]);
}

/** The member index a block signature's body names, or null when the body is malformed. */
export function voteSigner(vote: SignedVote): number | null {
  let body: MsgValue[];
  try {
    body = asList(unpackCanonical(vote.body, VOTE_BODY_BYTES_MAX), 4, "block signature");
  } catch (exc) {
    if (exc instanceof WireFormatError) return null;
    throw exc;
  }
  const signer = body[3];
  if (typeof signer === "number") return signer;
  return null; // (a bigint signer is no member index)
}

function chainProblem(header: BlockHeader, genesis: Genesis): string | null {
  if (!equalBytes(header.chainId, genesis.chainId)) {
    return `bundle is for another chain (${toHex(header.chainId).slice(0, 8)}…, we are on ${toHex(genesis.chainId).slice(0, 8)}…)`;
  }
  return null;
}

/** The inclusion half of verifyBundle: what is wrong with `receipt` as a receipt of `header`'s block. */
export function inclusionProblem(
  receipt: Receipt,
  leaf: Uint8Array,
  proof: readonly Uint8Array[],
  treeSize: number | bigint,
  header: BlockHeader,
): string | null {
  if (BigInt(receipt.height) !== BigInt(header.height)) {
    return `receipt height ${receipt.height} differs from the header's ${header.height}`;
  }
  if (!(BigInt(receipt.index) >= 0n && BigInt(receipt.index) < BigInt(treeSize))) {
    return `receipt index ${receipt.index} outside a tree of ${treeSize}`;
  }
  if (!verifyInclusion(leaf, receipt.index, treeSize, proof, header.receiptsRoot)) {
    return "receipt is not in the block (bad Merkle proof)";
  }
  return null;
}

/** The block-signature half: [what is wrong or null, the member the signature names or null]. */
export function verifyHeaderSignature(
  header: BlockHeader,
  signature: SignedVote,
  genesis: Genesis,
  hash: Uint8Array = headerHash(header),
): [string | null, number | null] {
  const problem = chainProblem(header, genesis);
  if (problem !== null) return [problem, null];
  const signer = voteSigner(signature);
  if (signer === null || !(signer >= 0 && signer < genesis.n)) return ["block signature is not by a member", signer];
  if (!equalBytes(signature.body, blockSignatureBody(header.height, hash, signer))) {
    return ["block signature is for another block", signer];
  }
  const member = genesis.members[signer]!;
  if (!verify(member.publicKey, "BLOCK", genesis.chainId, signature.body, signature.signature)) {
    return [`bad block signature by ${member.name}`, signer];
  }
  return [null, signer];
}

/**
 * What is wrong with `bundle`, or null (verify.py `verify_bundle`): the chain id, the
 * header's consensus mode (genesis' mode), the receipt's inclusion against header.receipts_root, and a block signature by a genesis member
 * over (height, header hash, signer) in the BLOCK domain. Whether the signer is the member you
 * asked is the caller's check (`voteSigner`).
 */
export function verifyBundle(bundle: Bundle, genesis: Genesis): string | null {
  const mode = bundle.header.consensus[0];
  return (
    chainProblem(bundle.header, genesis) ??
    // (as verifyReceipt: a document whose header names the other mode is refused later)
    (mode !== genesis.mode ? `the header is a ${String(mode)} block; this genesis is ${genesis.mode}` : null) ??
    inclusionProblem(bundle.receipt, encodeReceipt(bundle.receipt), bundle.proof, bundle.treeSize, bundle.header) ??
    verifyHeaderSignature(bundle.header, bundle.signature, genesis)[0]
  );
}
