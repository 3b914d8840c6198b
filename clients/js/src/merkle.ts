/**
 * Merkle trees over leaves, RFC 6962 §2.1 (consortium/crypto/merkle.py): leaves hashed with a
 * 0x00 prefix, interior nodes with 0x01, no duplicated odd node; the empty tree's root is
 * SHA-256 of the empty string.
 */

import { equalBytes } from "./bytes.js";
import { sha256, sha256Concat } from "./hash.js";

const LEAF = Uint8Array.of(0);
const NODE = Uint8Array.of(1);
export const EMPTY_ROOT = sha256(new Uint8Array(0));

export function leafHash(data: Uint8Array): Uint8Array {
  return sha256Concat(LEAF, data);
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return sha256Concat(NODE, left, right);
}

function levels(leaves: readonly Uint8Array[]): Uint8Array[][] {
  let level = leaves.map(leafHash);
  const out = [level];
  while (level.length > 1) {
    const next: Uint8Array[] = [];
    for (let i = 0; i + 1 < level.length; i += 2) next.push(nodeHash(level[i]!, level[i + 1]!));
    if (level.length % 2) next.push(level[level.length - 1]!);
    out.push(next);
    level = next;
  }
  return out;
}

/** The RFC 6962 root of `leaves`. */
export function merkleRoot(leaves: readonly Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return EMPTY_ROOT;
  const all = levels(leaves);
  return all[all.length - 1]![0]!;
}

/** The audit path of leaf `index`, deepest sibling first. */
export function inclusionProof(leaves: readonly Uint8Array[], index: number): Uint8Array[] {
  if (!(index >= 0 && index < leaves.length)) throw new RangeError(`leaf ${index} not in a tree of ${leaves.length}`);
  const path: Uint8Array[] = [];
  const all = levels(leaves);
  let i = index;
  for (const level of all.slice(0, -1)) {
    const sibling = i ^ 1;
    if (sibling < level.length) path.push(level[sibling]!);
    i = Math.floor(i / 2);
  }
  return path;
}

/**
 * RFC 9162 §2.1.3.2 verification of an inclusion proof (merkle.py `verify_inclusion`): the
 * leaf at `index` of a tree of `size` leaves with this audit path has root `root`. Never throws.
 */
export function verifyInclusion(
  leaf: Uint8Array,
  index: number | bigint,
  size: number | bigint,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): boolean {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (!(fn >= 0n && fn <= sn)) return false;
  let r = leafHash(leaf);
  for (const p of proof) {
    if (p.length !== 32 || sn === 0n) return false;
    if (fn & 1n || fn === sn) {
      r = nodeHash(p, r);
      if (!(fn & 1n)) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equalBytes(r, root);
}
