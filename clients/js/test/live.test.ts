/**
 * Against a real network (run only with CONSORTIUM_NET set to a directory written by
 * `consortium init --gateway` whose members are running; tests/e2e/test_js_client.py does it,
 * once over http:// and once for `init --gateway --tls`, then with CONSORTIUM_TLS_FILES naming
 * the directory `consortium client tls-files` wrote: mutual TLS 1.3, each member's key pinned):
 * submit a transaction through every member's gateway, wait for f+1 verified receipts, check
 * the receipt document offline against genesis.json, and check that the document with one byte
 * changed, and with a block signature by a key that is not a member's, are both refused. It
 * leaves the document in $CONSORTIUM_NET/js-live.receipt.json for the Python verifier.
 */

import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fromHex, toHex, utf8 } from "../src/bytes.js";
import { generateKeyPair, sign } from "../src/ed25519.js";
import { GatewayClient, parseGatewaysFile, type GatewayTlsOptions } from "../src/gateway.js";
import { loadGenesis } from "../src/genesis.js";
import { loadKeyFile } from "../src/keyfile.js";
import { signaturesNeeded, verifyReceiptDocument } from "../src/receipts.js";
import { createTransaction, put, randomNonce } from "../src/transaction.js";

const NET = process.env["CONSORTIUM_NET"];
const TLS_FILES = process.env["CONSORTIUM_TLS_FILES"];

async function tlsOptions(dir: string): Promise<GatewayTlsOptions> {
  const read = (name: string): Promise<string> => readFile(join(dir, name), "utf-8");
  return { cert: await read("cert.pem"), key: await read("key.pem"), ca: await read("ca.pem") };
}

/** The key the Python CLI signs with by default: client.toml's first key (`--client 1`). */
async function defaultClientKeyPath(net: string): Promise<string> {
  const toml = await readFile(join(net, "client.toml"), "utf-8");
  const keys = /^keys\s*=\s*\[([^\]]*)\]/m.exec(toml);
  const first = keys ? /"((?:[^"\\]|\\.)*)"/.exec(keys[1]!) : null;
  return join(net, first ? JSON.parse(`"${first[1]!}"`) as string : join("clients", "c1.pem"));
}

function flipHexDigit(text: string, at: number): string {
  return text.slice(0, at) + (parseInt(text[at]!, 16) ^ 1).toString(16) + text.slice(at + 1);
}

describe("a live network through its gateways", { skip: NET ? false : "CONSORTIUM_NET is not set" }, () => {
  it("commits with f+1 verified receipts, and the receipt document checks offline", async () => {
    const net = NET!;
    const genesis = await loadGenesis(join(net, "genesis.json"));
    const gateways = parseGatewaysFile(await readFile(join(net, "gateways.json"), "utf-8"));
    assert.equal(gateways.gateways.length, genesis.n, "one gateway per member");
    const keys = await loadKeyFile(await defaultClientKeyPath(net));
    assert.ok(genesis.clients.some((c) => toHex(c.publicKey) === toHex(keys.publicKey)), "the key is an admitted client");

    const https = gateways.gateways.every((g) => g.url.startsWith("https://"));
    assert.equal(https, TLS_FILES !== undefined, "https:// gateways exactly when CONSORTIUM_TLS_FILES is set");
    const options = TLS_FILES === undefined ? {} : { tls: await tlsOptions(TLS_FILES) };
    if (https) {
      // Without the TLS files: refused at once, naming the fix.
      assert.throws(() => GatewayClient.fromGatewaysFile(genesis, gateways), /is HTTPS \(mutual TLS\): pass the tls option/);
    }
    const client = GatewayClient.fromGatewaysFile(genesis, gateways, options);
    const key = utf8(`js-live-${Date.now()}`);
    const tx = createTransaction(keys, genesis.chainId, randomNonce(), Date.now() + 60_000, [put(key, utf8("hello from TypeScript"))]);
    const outcome = await client.submitAndWait(tx, { timeoutMs: 30_000 });
    assert.equal(outcome.status, "committed", `${outcome.reason} ${JSON.stringify(outcome.memberErrors)}`);
    assert.equal(outcome.receipt?.status, "ok");
    assert.ok(outcome.confirmations >= signaturesNeeded(genesis));
    assert.deepEqual(outcome.receipt?.txId, tx.id);

    // The document, offline, against nothing but genesis.json.
    const text = outcome.document!;
    const verdict = verifyReceiptDocument(text, genesis);
    assert.equal(verdict.valid, true, verdict.valid ? "" : verdict.error);
    const doc = JSON.parse(text) as {
      tx_id: string;
      header: string;
      block_signatures: Array<{ signer: string; body: string; signature: string }>;
    };
    assert.equal(doc.tx_id, toHex(tx.id));
    const signers = new Set(doc.block_signatures.map((s) => s.signer));
    assert.equal(signers.size, doc.block_signatures.length, "distinct members");
    assert.ok(signers.size >= signaturesNeeded(genesis));

    if (https) {
      // The pin: n1's and n2's URLs swapped, each presents the other's (valid, issued) key and
      // is refused as the member it is configured for; n3 and n4 decide alone.
      const [g1, g2, ...others] = gateways.gateways;
      const swapped = [{ member: g1!.member, url: g2!.url }, { member: g2!.member, url: g1!.url }, ...others];
      const pinned = new GatewayClient(genesis, swapped, options);
      const again = createTransaction(keys, genesis.chainId, randomNonce(), Date.now() + 60_000, [put(key, utf8("pinned"))]);
      const result = await pinned.submitAndWait(again, { timeoutMs: 30_000 });
      assert.equal(result.status, "committed", `${result.reason} ${JSON.stringify(result.memberErrors)}`);
      for (const name of [g1!.member, g2!.member]) {
        assert.match(result.memberErrors[name] ?? "", new RegExp(`${name}'s gateway presented TLS key [0-9a-f]{16}… but genesis lists`));
      }
      const signedBy = (JSON.parse(result.document!) as { block_signatures: Array<{ signer: string }> }).block_signatures.map((s) => s.signer);
      assert.ok(!signedBy.includes(g1!.member) && !signedBy.includes(g2!.member), `signed by ${signedBy.join(", ")}`);
    }

    // Left for the Python side to check (tests/e2e/test_js_client.py: tx verify-receipt).
    await writeFile(join(net, "js-live.receipt.json"), text);

    // One byte changed (a hex digit of the header): refused, when read or when verified.
    const tampered = text.replace(doc.header, flipHexDigit(doc.header, doc.header.length - 3));
    assert.notEqual(tampered, text);
    const refused = verifyReceiptDocument(tampered, genesis);
    assert.equal(refused.valid, false);

    // A block signature by a key that is not a member's, claiming a member's index: refused.
    const outsider = generateKeyPair();
    const [first, ...rest] = doc.block_signatures;
    const forged = { ...first!, signature: toHex(sign(outsider, "BLOCK", genesis.chainId, fromHex(first!.body))) };
    const impostor = JSON.stringify({ ...doc, block_signatures: [forged, ...rest] }, null, 2);
    const refusedImpostor = verifyReceiptDocument(impostor, genesis);
    assert.equal(refusedImpostor.valid, false);
    assert.ok(!refusedImpostor.valid && refusedImpostor.stage === "verify");
    assert.match(refusedImpostor.valid ? "" : refusedImpostor.error, new RegExp(`bad signature by ${first!.signer}`));
  });
});
