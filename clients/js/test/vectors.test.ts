/**
 * The TypeScript client against tests/vectors/shared.json: every verdict the node (Python)
 * gives, the TypeScript gives — every case the node refuses, this refuses — and every byte it
 * builds (encodings, transactions, signatures, receipt documents) is the Python's.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import * as ed from "@noble/ed25519";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KeyFileError, loadKeyFile } from "../src/keyfile.js";
import { fromHex, toHex } from "../src/bytes.js";
import { pack, unpackCanonical, WireFormatError } from "../src/codec.js";
import { isValidPublicKey, keyPairFromSeed, sign, signedMessage, verify, type DomainName } from "../src/ed25519.js";
import { sha256 } from "../src/hash.js";
import { merkleRoot, verifyInclusion } from "../src/merkle.js";
import { createTransaction, encodeTransaction, type Op } from "../src/transaction.js";
import { GenesisError, parseGenesis } from "../src/genesis.js";
import { decodeBundle, verifyBundle, voteSigner } from "../src/bundle.js";
import { dumps, fromBundles, verifyReceiptDocument } from "../src/receipts.js";
import { buildBytes, buildValue, VECTORS, type Json } from "./vectors.js";

const E = VECTORS.ed25519;

describe("ed25519", () => {
  it("derives the listed public keys from seeds", () => {
    for (const c of E.keys) assert.equal(toHex(keyPairFromSeed(fromHex(c.seed)).publicKey), c.public_key, c.name);
  });

  it("signs exactly as the node's signer", () => {
    for (const c of E.sign) {
      const sig = sign(keyPairFromSeed(fromHex(c.seed)), c.domain as DomainName, fromHex(c.chain_id), fromHex(c.body));
      assert.equal(toHex(sig), c.signature, c.name);
    }
  });

  it("gives libsodium's verdict on every case", () => {
    assert.ok(E.verify.length > 80);
    const wrong: string[] = [];
    for (const c of E.verify as Json[]) {
      const verdict = verify(fromHex(c.public_key), c.domain as DomainName, fromHex(c.chain_id), fromHex(c.body), fromHex(c.signature));
      if (verdict !== c.valid) wrong.push(`${c.name}: node ${c.valid}, TypeScript ${verdict}`);
    }
    assert.deepEqual(wrong, []);
    assert.ok(E.verify.some((c: Json) => c.valid) && E.verify.some((c: Json) => !c.valid));
  });

  it("needs its explicit checks: noble's strict mode alone accepts cases the node refuses", () => {
    const lenient = (E.verify as Json[]).filter((c) => {
      if (c.valid || c.signature.length !== 128 || c.public_key.length !== 64) return false;
      const message = signedMessage(c.domain as DomainName, fromHex(c.chain_id), fromHex(c.body));
      try {
        return ed.verify(fromHex(c.signature), message, fromHex(c.public_key), { zip215: false });
      } catch {
        return false;
      }
    });
    const names = lenient.map((c) => c.name as string);
    assert.ok(names.some((n) => n.startsWith("R: small-order")), names.join("; "));
    assert.ok(names.some((n) => n.startsWith("R = rB + T")), names.join("; "));
    assert.ok(names.some((n) => n.includes("mixed order")), names.join("; "));
  });

  it("loads the node's PEM key files, and refuses one others can read", async () => {
    const dir = await mkdtemp(join(tmpdir(), "consortium-js-"));
    try {
      for (const c of E.key_files) {
        const path = join(dir, "key.pem");
        await writeFile(path, c.pem, { mode: 0o600 });
        assert.equal(toHex((await loadKeyFile(path)).publicKey), c.public_key, c.name);
        await chmod(path, 0o644);
        await assert.rejects(loadKeyFile(path), KeyFileError);
        await rm(path);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("enrols the public keys the node enrols", () => {
    for (const c of E.public_keys) assert.equal(isValidPublicKey(fromHex(c.public_key)), c.valid, c.name);
  });
});

function expectBytes(field: Json, raw: Uint8Array, name: string): void {
  if (typeof field === "string") assert.equal(toHex(raw), field, name);
  else {
    assert.equal(raw.length, field.length, name);
    assert.equal(toHex(sha256(raw)), field.sha256, name);
  }
}

describe("canonical msgpack", () => {
  it("encodes every value as the node's pack, and decodes it back", () => {
    for (const c of VECTORS.msgpack.encode as Json[]) {
      const raw = pack(buildValue(c.value));
      expectBytes(c.bytes, raw, c.name);
      assert.deepEqual(pack(unpackCanonical(raw)), raw, c.name);
    }
  });

  it("accepts and refuses exactly what unpack_canonical does", () => {
    const wrong: string[] = [];
    for (const c of VECTORS.msgpack.decode as Json[]) {
      let accepted = true;
      try {
        unpackCanonical(buildBytes(c.bytes));
      } catch (exc) {
        assert.ok(exc instanceof WireFormatError, `${c.name}: ${String(exc)}`);
        accepted = false;
      }
      if (accepted !== c.canonical) wrong.push(`${c.name}: node ${c.canonical}, TypeScript ${accepted}`);
    }
    assert.deepEqual(wrong, []);
  });

  it("refuses to encode a float", () => {
    assert.throws(() => pack(1.5), TypeError);
  });
});

function op(doc: Json[]): Op {
  const b = (x: string | null): Uint8Array | null => (x === null ? null : fromHex(x));
  switch (doc[0]) {
    case "put":
      return { op: "put", key: fromHex(doc[1]), value: fromHex(doc[2]) };
    case "del":
      return { op: "del", key: fromHex(doc[1]) };
    case "cas":
      return { op: "cas", key: fromHex(doc[1]), expected: b(doc[2]), new: b(doc[3]) };
    default:
      return { op: "get", key: fromHex(doc[1]) };
  }
}

describe("transactions", () => {
  it("are Transaction.create's bytes, id and signature", () => {
    for (const c of VECTORS.transactions as Json[]) {
      const keys = keyPairFromSeed(fromHex(c.seed));
      const big = BigInt(c.expiry_ms as string);
      const expiry = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
      const tx = createTransaction(keys, fromHex(c.chain_id), fromHex(c.nonce), expiry, (c.ops as Json[][]).map(op));
      assert.equal(toHex(keys.publicKey), c.public_key, c.name);
      assert.equal(toHex(tx.body), c.body, c.name);
      assert.equal(toHex(tx.id), c.id, c.name);
      assert.equal(toHex(tx.signature), c.signature, c.name);
      assert.equal(toHex(encodeTransaction(tx)), c.encoded, c.name);
      assert.ok(verify(keys.publicKey, "TX", tx.chainId, tx.body, tx.signature));
    }
  });
});

describe("merkle", () => {
  it("computes the roots", () => {
    for (const t of VECTORS.merkle.roots as Json[]) {
      assert.equal(toHex(merkleRoot((t.leaves as string[]).map(fromHex))), t.root);
    }
  });

  it("gives verify_inclusion's verdicts", () => {
    for (const c of VECTORS.merkle.inclusion as Json[]) {
      const verdict = verifyInclusion(fromHex(c.leaf), c.index, c.tree_size, (c.proof as string[]).map(fromHex), fromHex(c.root));
      assert.equal(verdict, c.valid, c.name);
    }
  });
});

describe("genesis", () => {
  it("computes the chain id and f, or refuses with the node's message", () => {
    for (const c of VECTORS.genesis as Json[]) {
      if (c.error === null) {
        const g = parseGenesis(c.json, "genesis.json");
        assert.equal(toHex(g.chainId), c.chain_id, c.name);
        assert.equal(g.f, c.f, c.name);
      } else {
        assert.throws(() => parseGenesis(c.json, "genesis.json"), (exc: unknown) => {
          assert.ok(exc instanceof GenesisError, c.name);
          assert.equal(exc.message, c.error, c.name);
          return true;
        });
      }
    }
  });
});

describe("receipt bundles", () => {
  it("verify_bundle's verdicts, word for word", () => {
    const genesis = parseGenesis(VECTORS.bundles.genesis);
    for (const c of VECTORS.bundles.cases as Json[]) {
      const bundle = decodeBundle(fromHex(c.bundle));
      assert.equal(verifyBundle(bundle, genesis), c.problem, c.name);
      assert.equal(voteSigner(bundle.signature), c.signer, c.name);
    }
  });
});

describe("receipt documents", () => {
  const geneses = Object.fromEntries(
    Object.entries(VECTORS.receipts.geneses as Record<string, string>).map(([k, text]) => [k, parseGenesis(text)]),
  );

  it("refuses what loads and verify_receipt refuse, with the same sentences", () => {
    const wrong: string[] = [];
    for (const c of VECTORS.receipts.cases as Json[]) {
      const verdict = verifyReceiptDocument(c.document, geneses[c.genesis]!);
      const got = verdict.valid ? [true, null, null] : [false, verdict.stage, verdict.error];
      let expected = [c.valid, c.stage, c.error];
      // A JSON parser's own complaint is the one sentence that differs between languages.
      if (!verdict.valid && typeof c.error === "string" && c.error.startsWith("not JSON: ")) {
        assert.ok(verdict.error.startsWith("not JSON: "), c.name);
        expected = [c.valid, c.stage, verdict.error];
      }
      if (JSON.stringify(got) !== JSON.stringify(expected)) wrong.push(`${c.name}: node ${JSON.stringify(expected)}, TypeScript ${JSON.stringify(got)}`);
    }
    assert.deepEqual(wrong, []);
    const names = (VECTORS.receipts.cases as Json[]).filter((c) => !c.valid).map((c) => c.name as string);
    for (const needed of ["one byte changed in the header", "a block signature by a non-member key (as n2)", "too few signers (f)"]) {
      assert.ok(names.includes(needed), needed);
    }
  });

  it("writes the document from f+1 bundles byte for byte as the Python client", () => {
    const { bundles, document } = VECTORS.receipts.from_bundles as { bundles: string[]; document: string };
    const genesis = geneses["pbft"]!;
    const decoded = bundles.map((b) => decodeBundle(fromHex(b)));
    for (const b of decoded) assert.equal(verifyBundle(b, genesis), null);
    assert.equal(dumps(fromBundles(decoded), genesis), document);
    assert.equal(verifyReceiptDocument(document, genesis).valid, true);
  });
});
