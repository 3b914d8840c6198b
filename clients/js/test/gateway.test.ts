/**
 * GatewayClient against a fake network of member gateways (no sockets): real blocks, real
 * receipts, real Ed25519 block signatures by the members of the vectors' genesis (seeds
 * sha256("member i"), as tests/ledger/chain_fixture.py), and members that are down, slow,
 * lying, or answering for someone else.
 */

import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { fromBase64, toBase64, toHex, utf8 } from "../src/bytes.js";
import { pack, unpackCanonical, type MsgValue } from "../src/codec.js";
import { keyPairFromSeed, sign, type KeyPair } from "../src/ed25519.js";
import { encodeBundle, type Bundle } from "../src/bundle.js";
import { ANSWER_BYTES_MAX, GatewayClient, GatewayConfigError, parseGatewaysFile } from "../src/gateway.js";
import { parseGenesis, type Genesis } from "../src/genesis.js";
import { sha256 } from "../src/hash.js";
import { blockSignatureBody, encodeReceipt, headerHash, type BlockHeader, type Receipt } from "../src/ledger.js";
import { inclusionProof, merkleRoot } from "../src/merkle.js";
import { loads, verifyReceiptDocument } from "../src/receipts.js";
import { createTransaction, encodeTransaction, put, type Transaction } from "../src/transaction.js";
import { VECTORS } from "./vectors.js";

const MEMBERS: KeyPair[] = [0, 1, 2, 3].map((i) => keyPairFromSeed(sha256(utf8(`member ${i}`))));
const CLIENT = keyPairFromSeed(sha256(utf8("client")));
const OUTSIDER = keyPairFromSeed(sha256(utf8("gateway test outsider")));
const PBFT = parseGenesis(VECTORS.receipts.geneses.pbft);
const RAFT = parseGenesis(VECTORS.receipts.geneses.raft);

function transaction(genesis: Genesis, nonce = "gateway test"): Transaction {
  return createTransaction(CLIENT, genesis.chainId, utf8(nonce), 1_700_000_060_000, [put(utf8("k"), utf8("v"))]);
}

/** A block holding `tx` at index 1 (after another), and each member's bundle for it. */
function block(genesis: Genesis, tx: Transaction, status: "ok" | "rejected" = "ok"): { header: BlockHeader; bundle: (signer: number, key?: KeyPair) => Bundle } {
  const other: Receipt = { txId: sha256(utf8("other")), status: "ok", reason: "", results: [null], height: 7, index: 0 };
  const ours: Receipt = { txId: tx.id, status, reason: status === "ok" ? "" : "cas_mismatch", results: [null], height: 7, index: 1 };
  const leaves = [encodeReceipt(other), encodeReceipt(ours)];
  const header: BlockHeader = {
    chainId: genesis.chainId,
    height: 7,
    prevHash: sha256(utf8("previous block")),
    timestampMs: 1_700_000_000_007,
    txRoot: merkleRoot([other.txId, ours.txId]),
    stateRoot: sha256(utf8("state")),
    receiptsRoot: merkleRoot(leaves),
    consensus: genesis.mode === "pbft" ? ["pbft", 7, 1_700_000_000_007] : ["raft", 1, 8, 1_700_000_000_007],
  };
  const bundle = (signer: number, key: KeyPair = MEMBERS[signer]!): Bundle => {
    const body = blockSignatureBody(7, headerHash(header), signer);
    return {
      receipt: ours,
      proof: inclusionProof(leaves, 1),
      treeSize: 2,
      header,
      signature: { body, signature: sign(key, "BLOCK", genesis.chainId, body) },
    };
  };
  return { header, bundle };
}

type Behaviour = (path: string, method: string, body: unknown, signal: AbortSignal) => Promise<Response>;

function json(status: number, doc: unknown): Response {
  return new Response(JSON.stringify(doc), { status, headers: { "content-type": "application/json" } });
}

const committed = (tx: Transaction, b: Bundle): Response =>
  json(200, { results: [{ tx_id: toHex(tx.id), status: "committed", detail: "", receipt: toBase64(encodeBundle(b)) }] });
const accepted = (tx: Transaction, detail = ""): Response =>
  json(200, { results: [{ tx_id: toHex(tx.id), status: "accepted", detail, receipt: null }] });

const down: Behaviour = async () => {
  throw new TypeError("fetch failed", { cause: { code: "ECONNREFUSED" } });
};

const silent: Behaviour = (_path, _method, _body, signal) =>
  new Promise((_resolve, reject) => signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));

function answers(tx: Transaction, b: Bundle): Behaviour {
  return async () => committed(tx, b);
}

/** Accepts at submit, has no receipt the first time it is asked, then sends it. */
function lateAnswers(tx: Transaction, b: Bundle): Behaviour {
  let asked = 0;
  return async (_path, method) => {
    if (method === "POST") return accepted(tx);
    asked += 1;
    return asked === 1
      ? json(404, { error: { code: "not_found", message: "no receipt for this transaction yet" } })
      : json(200, { tx_id: toHex(tx.id), height: 7, receipt: toBase64(encodeBundle(b)) });
  };
}

interface Call {
  readonly member: string;
  readonly method: string;
  readonly path: string;
  readonly body: unknown;
  readonly contentType: string | null;
}

function network(behaviours: Record<string, Behaviour>): { fetch: typeof fetch; calls: Call[] } {
  const calls: Call[] = [];
  const fake = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(String(input));
    const member = url.hostname;
    const method = init?.method ?? "GET";
    const body = typeof init?.body === "string" ? (JSON.parse(init.body) as unknown) : undefined;
    const headers = new Headers(init?.headers);
    calls.push({ member, method, path: url.pathname + url.search, body, contentType: headers.get("content-type") });
    const behaviour = behaviours[member];
    if (behaviour === undefined) throw new TypeError("fetch failed");
    return behaviour(url.pathname + url.search, method, body, init?.signal ?? new AbortController().signal);
  };
  return { fetch: fake as typeof fetch, calls };
}

const gateways = (genesis: Genesis): Array<{ member: string; url: string }> =>
  genesis.members.map((m) => ({ member: m.name, url: `http://${m.name}:7301` }));

describe("GatewayClient", () => {
  it("commits on f+1 verified agreeing bundles, ignoring a liar and a member that is down", async () => {
    const tx = transaction(PBFT);
    const { bundle } = block(PBFT, tx);
    const lie = { ...bundle(1), receipt: { ...bundle(1).receipt, status: "rejected" as const, reason: "cas_mismatch" } };
    const net = network({ n1: answers(tx, bundle(0)), n2: answers(tx, lie), n3: down, n4: lateAnswers(tx, bundle(3)) });
    const client = new GatewayClient(PBFT, gateways(PBFT), { fetch: net.fetch, retryDelayMs: 10 });
    const outcome = await client.submitAndWait(tx, { timeoutMs: 5_000 });

    assert.equal(outcome.status, "committed", JSON.stringify(outcome.memberErrors));
    assert.equal(outcome.confirmations, 2);
    assert.equal(outcome.receipt?.status, "ok");
    assert.match(outcome.memberErrors["n2"] ?? "", /does not verify: receipt is not in the block/);
    assert.match(outcome.memberErrors["n3"] ?? "", /unreachable: ECONNREFUSED/);
    const verdict = verifyReceiptDocument(outcome.document!, PBFT);
    assert.equal(verdict.valid, true);
    const doc = JSON.parse(outcome.document!) as { block_signatures: Array<{ signer: string }>; tx_id: string };
    assert.deepEqual(doc.block_signatures.map((s) => s.signer), ["n1", "n4"]);
    assert.equal(doc.tx_id, toHex(tx.id));

    // What went over the wire is the contract's: the transaction's canonical bytes, base64.
    const posts = net.calls.filter((c) => c.method === "POST");
    assert.deepEqual(new Set(posts.map((c) => c.member)), new Set(["n1", "n2", "n3", "n4"]));
    for (const c of posts) {
      assert.match(c.path, /^\/v1\/transactions\?wait_ms=\d+$/);
      assert.equal(c.contentType, "application/json");
      const sent = (c.body as { transactions: string[] }).transactions;
      assert.equal(sent.length, 1);
      assert.deepEqual(fromBase64(sent[0]!), encodeTransaction(tx));
    }
    assert.ok(net.calls.some((c) => c.member === "n4" && c.method === "GET" && c.path.startsWith(`/v1/transactions/${toHex(tx.id)}/receipt?wait_ms=`)));
  });

  it("stays pending when only one honest member vouches, whatever a self-consistent liar signs", async () => {
    const tx = transaction(PBFT, "pending");
    const honest = block(PBFT, tx);
    const forged = block(PBFT, tx, "rejected"); // another block, validly signed by n2 itself
    const net = network({ n1: answers(tx, honest.bundle(0)), n2: answers(tx, forged.bundle(1)), n3: down, n4: silent });
    const client = new GatewayClient(PBFT, gateways(PBFT), { fetch: net.fetch, retryDelayMs: 10 });
    const outcome = await client.submitAndWait(tx, { timeoutMs: 600 });
    assert.equal(outcome.status, "pending");
    assert.equal(outcome.confirmations, 1);
    assert.equal(outcome.reason, "1 of 2 confirmations");
    assert.equal(outcome.document, undefined);
  });

  it("counts no bundle signed by someone else, or by a key that is not the member's", async () => {
    const tx = transaction(PBFT, "impostors");
    const { bundle } = block(PBFT, tx);
    const net = network({
      n1: answers(tx, bundle(0)),
      n2: answers(tx, bundle(0)), // n1's valid bundle, replayed by n2
      n3: answers(tx, bundle(2, OUTSIDER)), // signed as n3 with an outsider's key
      n4: down,
    });
    const client = new GatewayClient(PBFT, gateways(PBFT), { fetch: net.fetch, retryDelayMs: 10 });
    const outcome = await client.submitAndWait(tx, { timeoutMs: 600 });
    assert.equal(outcome.status, "pending");
    assert.match(outcome.memberErrors["n2"] ?? "", /signed as member 0, not as itself/);
    assert.match(outcome.memberErrors["n3"] ?? "", /bad block signature by n3/);
  });

  it("reports a final rejection f+1 members agree on", async () => {
    const tx = transaction(PBFT, "rejected");
    const rejected: Behaviour = async () =>
      json(200, { results: [{ tx_id: toHex(tx.id), status: "rejected", detail: "bad_signature", receipt: null }] });
    const net = network({ n1: rejected, n2: rejected, n3: silent, n4: silent });
    const client = new GatewayClient(PBFT, gateways(PBFT), { fetch: net.fetch });
    const outcome = await client.submitAndWait(tx, { timeoutMs: 5_000 });
    assert.equal(outcome.status, "rejected");
    assert.equal(outcome.reason, "bad_signature");
    assert.equal(outcome.confirmations, 2);
  });

  it("in raft submits to one member at a time and needs one verified bundle", async () => {
    const tx = transaction(RAFT, "raft");
    const { bundle } = block(RAFT, tx);
    const overloaded: Behaviour = async () =>
      new Response(JSON.stringify({ error: { code: "overloaded", message: "busy" } }), { status: 503, headers: { "retry-after": "0" } });
    const net = network({ n1: down, n2: overloaded, n3: answers(tx, bundle(2)), n4: answers(tx, bundle(3)) });
    const client = new GatewayClient(RAFT, gateways(RAFT), { fetch: net.fetch, retryDelayMs: 10 });
    const outcome = await client.submitAndWait(tx, { timeoutMs: 5_000 });
    assert.equal(outcome.status, "committed");
    assert.equal(outcome.confirmations, 1);
    assert.deepEqual(net.calls.map((c) => c.member), ["n1", "n2", "n3"]);
    const proof = loads(outcome.document!);
    assert.equal(proof.signatures.length, 1);
    assert.match(outcome.memberErrors["n2"] ?? "", /HTTP 503 overloaded: busy/);
  });

  it("in raft moves on from a member that never has the receipt", async () => {
    const tx = transaction(RAFT, "raft cut off");
    const { bundle } = block(RAFT, tx);
    const cutOff: Behaviour = async (_path, method) =>
      method === "POST" ? accepted(tx) : json(404, { error: { code: "not_found", message: "not executed" } });
    const net = network({ n1: cutOff, n2: answers(tx, bundle(1)), n3: down, n4: down });
    const client = new GatewayClient(RAFT, gateways(RAFT), { fetch: net.fetch, retryDelayMs: 10 });
    const outcome = await client.submitAndWait(tx, { timeoutMs: 5_000 });
    assert.equal(outcome.status, "committed");
    assert.deepEqual(net.calls.map((c) => `${c.member} ${c.method}`), ["n1 POST", "n1 GET", "n1 POST", "n1 GET", "n2 POST"]);
  });

  it("refuses configuration that does not fit the genesis", () => {
    const file = parseGatewaysFile(JSON.stringify({ chain_id: "00".repeat(32), gateways: gateways(PBFT) }));
    assert.throws(() => GatewayClient.fromGatewaysFile(PBFT, file), GatewayConfigError);
    assert.throws(() => new GatewayClient(PBFT, [{ member: "n9", url: "http://n9:1" }]), /no such member/);
    assert.throws(() => parseGatewaysFile("{}"), GatewayConfigError);
    const good = parseGatewaysFile(JSON.stringify({ chain_id: toHex(PBFT.chainId), gateways: gateways(PBFT) }));
    assert.ok(GatewayClient.fromGatewaysFile(PBFT, good));
  });

  it("refuses an https:// gateway without the tls option, naming the fix", () => {
    const https = gateways(PBFT).map((g) => ({ ...g, url: g.url.replace("http:", "https:") }));
    assert.throws(
      () => new GatewayClient(PBFT, https),
      /gateway for 'n1': https:\/\/n1:7301 is HTTPS \(mutual TLS\): pass the tls option \{cert, key, ca\}, as `consortium client tls-files/,
    );
    assert.ok(new GatewayClient(PBFT, https, { tls: { cert: "", key: "", ca: "" } }));
  });

  it("reads at most 16 MiB of an answer: a gateway sending an endless body is that member's error", async () => {
    const tx = transaction(PBFT, "endless");
    let sent = 0;
    let closed = 0;
    const chunk = Buffer.alloc(1 << 16, 0x20);
    const server: Server = createServer((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"results": [');
      const more = (): void => {
        while (!res.destroyed && res.write(chunk)) sent += chunk.length;
        if (!res.destroyed) res.once("drain", more);
      };
      res.on("close", () => (closed += 1));
      more();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const client = new GatewayClient(PBFT, [{ member: "n1", url: `http://127.0.0.1:${port}` }], { retryDelayMs: 10_000 });
      const outcome = await client.submitAndWait(tx, { timeoutMs: 4_000 });
      assert.equal(outcome.status, "pending");
      assert.equal(outcome.memberErrors["n1"], `an answer longer than ${ANSWER_BYTES_MAX} bytes`);
      assert.equal(ANSWER_BYTES_MAX, 16 * 1024 * 1024);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.ok(closed >= 1, "the client hung up");
      assert.ok(sent < 4 * ANSWER_BYTES_MAX, `the client stopped reading (${sent} bytes sent)`);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("builds members' keys that are the genesis' (the fake network is the real one's shape)", () => {
    assert.deepEqual(PBFT.members.map((m) => toHex(m.publicKey)), MEMBERS.map((k) => toHex(k.publicKey)));
    const value: MsgValue = unpackCanonical(pack([1, "x"]));
    assert.deepEqual(value, [1, "x"]);
  });
});
