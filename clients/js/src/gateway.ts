/**
 * A client of the members' HTTP/JSON gateways (docs/gateway.md) that trusts none of them.
 *
 * Gateway URLs are client configuration. `GatewayClient.submitAndWait` hands a signed
 * transaction to EVERY member's gateway in pbft (a silent or censoring member cannot hide it;
 * in raft to one member at a time, the next one when it fails, as the Python client does),
 * asks each for its receipt bundle (`POST /v1/transactions?wait_ms=`, then
 * `GET /v1/transactions/{id}/receipt?wait_ms=`), verifies every bundle (verifyBundle: Merkle
 * proof to the header, a block signature by THAT member over the header's hash), and decides
 * "committed" once f+1 DISTINCT members (raft: 1) sent verified bundles that agree on the
 * receipt and the block — at least one of them honest — returning the receipt document built
 * from their signatures. Members that are down, slow or lying (a bundle that does not verify is
 * ignored, and that member is asked no more) cost time, never a wrong answer; at the deadline
 * the outcome is "pending": the transaction may still commit.
 *
 * https:// gateways speak mutual TLS 1.3 (docs/tls.md): pass `tls` (the PEM files `consortium
 * client tls-files` writes); the client then presents that certificate, trusts only the
 * network's issuer, and PINS each member: the gateway's certificate key must be the key genesis
 * lists for the member its URL is configured for (the issuer is public: it proves nothing).
 * Every answer is read at most ANSWER_BYTES_MAX bytes (gateway URLs are untrusted).
 */

import { equalBytes, fromBase64, toBase64, toHex } from "./bytes.js";
import { WireFormatError } from "./codec.js";
import { decodeBundle, verifyBundle, voteSigner, type Bundle } from "./bundle.js";
import type { Genesis, Member } from "./genesis.js";
import { encodeReceipt, headerHash, type Receipt } from "./ledger.js";
import { dumps, fromBundles, signaturesNeeded, type ReceiptProof } from "./receipts.js";
import { encodeTransaction, type Transaction } from "./transaction.js";

/** One entry of net/gateways.json: a member's name (as in genesis) and its gateway's URL. */
export interface GatewayEntry {
  readonly member: string;
  readonly url: string;
}

/** net/gateways.json, written by `consortium init --gateway`. */
export interface GatewaysFile {
  readonly chain_id: string;
  readonly gateways: readonly GatewayEntry[];
}

/** Configuration that cannot be used (the message says why). */
export class GatewayConfigError extends Error {
  override name = "GatewayConfigError";
}

/** Parse gateways.json's text; checks its shape (its URLs are still never trusted). */
export function parseGatewaysFile(text: string): GatewaysFile {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (exc) {
    throw new GatewayConfigError(`gateways.json: not JSON: ${(exc as Error).message}`);
  }
  const d = doc as { chain_id?: unknown; gateways?: unknown };
  if (typeof doc !== "object" || doc === null || typeof d.chain_id !== "string" || !Array.isArray(d.gateways)) {
    throw new GatewayConfigError('gateways.json: expected {"chain_id": hex, "gateways": [{"member", "url"}, ...]}');
  }
  const gateways = d.gateways.map((g: unknown, i: number) => {
    const e = g as { member?: unknown; url?: unknown };
    if (typeof g !== "object" || g === null || typeof e.member !== "string" || typeof e.url !== "string") {
      throw new GatewayConfigError(`gateways.json: gateways[${i}] must be {"member": name, "url": "http://host:port"}`);
    }
    return { member: e.member, url: e.url };
  });
  return { chain_id: d.chain_id, gateways };
}

/** What the client knows about one transaction. */
export interface TxOutcome {
  readonly txId: Uint8Array;
  /**
   * committed: f+1 distinct members (raft: 1) proved its receipt; `receipt`, `proof` and
   *            `document` are set (read receipt.status: "ok", or "rejected" at execution);
   * rejected:  f+1 members refused it for a reason every member decides alike from its bytes;
   * pending:   neither by the deadline: it MAY STILL COMMIT (submit the same transaction again).
   */
  readonly status: "committed" | "rejected" | "pending";
  readonly reason: string;
  /** Distinct members that vouched for the reported result. */
  readonly confirmations: number;
  readonly receipt?: Receipt;
  readonly proof?: ReceiptProof;
  /** The receipt document (JSON text, as the Python client writes it). */
  readonly document?: string;
  /** What went wrong with each member that did not vouch (down, refused, lied, ...). */
  readonly memberErrors: Readonly<Record<string, string>>;
}

/**
 * What the client presents and trusts on https:// gateways (PEM text; `consortium client
 * tls-files --key KEY --genesis genesis.json --out DIR` writes them as DIR/cert.pem, key.pem
 * and ca.pem). The members' keys are pinned from genesis whatever `ca` says.
 */
export interface GatewayTlsOptions {
  /** The client certificate (for an admitted client key, issued by the network's issuer). */
  readonly cert: string;
  /** Its private key, PKCS#8 PEM (encrypted: give `passphrase`). */
  readonly key: string;
  /** The network issuer's certificate: the only anchor trusted. */
  readonly ca: string;
  readonly passphrase?: string;
}

/** The longest gateway answer read (as the Python client: 16 MiB); longer is that member's error. */
export const ANSWER_BYTES_MAX = 16 << 20;

export interface GatewayClientOptions {
  /** The fetch for http:// gateways (default: the global one, Node 18+); tests pass a fake network. */
  readonly fetch?: typeof fetch;
  /** Needed for https:// gateways (mutual TLS): see GatewayTlsOptions. */
  readonly tls?: GatewayTlsOptions;
  /** Longest wait_ms asked of a gateway per request (default 10000; the gateway allows 30000). */
  readonly waitMsMax?: number;
  /** Pause after a failed request before asking that member again (default 250 ms). */
  readonly retryDelayMs?: number;
}

export interface SubmitOptions {
  /** Give up (outcome "pending") after this long (default 30000 ms). */
  readonly timeoutMs?: number;
}

const FINAL_REJECTIONS = new Set(["bad_signature", "wrong_chain"]);

/** Whether every honest member decides this rejection alike from the transaction's bytes. */
export function isFinalRejection(reason: string): boolean {
  return FINAL_REJECTIONS.has(reason) || reason.startsWith("malformed");
}

interface Vouch {
  readonly receipt: Uint8Array;
  readonly blockHash: Uint8Array;
  readonly bundle: Bundle;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfterMs: number | null,
  ) {
    super(message);
  }
}

interface Target {
  readonly member: Member;
  readonly url: string;
  readonly https: boolean;
  /** https: the keep-alive agent presenting our certificate and pinning this member's key. */
  agent?: Promise<import("node:https").Agent>;
}

/** A gateway's answer: its status, Retry-After, and its body (at most ANSWER_BYTES_MAX). */
interface Answer {
  readonly status: number;
  readonly retryAfter: string | null;
  readonly text: string;
}

class TooLong extends Error {
  constructor() {
    super(`an answer longer than ${ANSWER_BYTES_MAX} bytes`);
  }
}

/** A fetch response's body, read with a byte counter: TooLong (and the stream cancelled) past the cap. */
async function readCapped(response: Response): Promise<string> {
  if (response.body === null) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    length += value.byteLength;
    if (length > ANSWER_BYTES_MAX) {
      await reader.cancel().catch(() => undefined);
      throw new TooLong();
    }
    chunks.push(value);
  }
  const all = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

type X509Class = typeof import("node:crypto").X509Certificate;

/** The raw Ed25519 public key of a DER certificate, or null when it carries another kind of key. */
function certificateKey(X509Certificate: X509Class, der: Uint8Array): Uint8Array | null {
  const key = new X509Certificate(der).publicKey;
  if (key.asymmetricKeyType !== "ed25519") return null;
  const spki = key.export({ format: "der", type: "spki" });
  return new Uint8Array(spki.subarray(spki.length - 32));
}

function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, "") + path;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, Math.max(0, ms));
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** The per-transaction state shared by the member tasks. */
class Tally {
  readonly vouched = new Map<number, Vouch>();
  readonly rejected = new Map<number, string>();
  readonly errors: Record<string, string> = {};
  readonly done = new AbortController();
  decided: TxOutcome | null = null;

  constructor(
    readonly tx: Transaction,
    readonly genesis: Genesis,
    readonly needed: number,
  ) {}

  /** A member's answer that carries a bundle: verify it, count it, maybe decide. */
  onBundle(member: Member, raw: Uint8Array): "counted" | "invalid" {
    let bundle: Bundle;
    try {
      bundle = decodeBundle(raw);
    } catch (exc) {
      if (!(exc instanceof WireFormatError)) throw exc;
      this.errors[member.name] = `sent an undecodable bundle: ${exc.message}`;
      return "invalid";
    }
    if (!equalBytes(bundle.receipt.txId, this.tx.id)) {
      this.errors[member.name] = "sent a bundle for another transaction";
      return "invalid";
    }
    const signer = voteSigner(bundle.signature);
    if (signer !== member.index) {
      this.errors[member.name] = `sent a bundle signed as member ${signer ?? "?"}, not as itself`;
      return "invalid";
    }
    const problem = verifyBundle(bundle, this.genesis);
    if (problem !== null) {
      this.errors[member.name] = `sent a bundle that does not verify: ${problem}`;
      return "invalid";
    }
    delete this.errors[member.name];
    this.vouched.set(member.index, { receipt: encodeReceipt(bundle.receipt), blockHash: headerHash(bundle.header), bundle });
    this.decide();
    return "counted";
  }

  onRejection(member: Member, reason: string): void {
    if (isFinalRejection(reason)) this.rejected.set(member.index, reason);
    this.errors[member.name] = `rejected it: ${reason}`;
    this.decide();
  }

  /** The f+1 rule (client/tally.py): agreeing verified bundles win over any rejection. */
  private decide(): void {
    if (this.decided) return;
    const best = this.best();
    if (best.length >= this.needed) {
      const bundles = best.map((v) => v.bundle);
      const proof = fromBundles(bundles);
      this.finish({
        txId: this.tx.id,
        status: "committed",
        reason: proof.receipt.reason,
        confirmations: best.length,
        receipt: proof.receipt,
        proof,
        document: dumps(proof, this.genesis),
        memberErrors: { ...this.errors },
      });
      return;
    }
    const counts = new Map<string, number>();
    for (const reason of this.rejected.values()) counts.set(reason, (counts.get(reason) ?? 0) + 1);
    for (const [reason, count] of [...counts].sort()) {
      if (count >= this.needed) {
        this.finish({ txId: this.tx.id, status: "rejected", reason, confirmations: count, memberErrors: { ...this.errors } });
        return;
      }
    }
  }

  best(): Vouch[] {
    const groups = new Map<string, Vouch[]>();
    for (const v of this.vouched.values()) {
      const key = toHex(v.receipt) + ":" + toHex(v.blockHash);
      const group = groups.get(key) ?? [];
      group.push(v);
      groups.set(key, group);
    }
    let best: Vouch[] = [];
    for (const g of groups.values()) if (g.length > best.length) best = g;
    return best;
  }

  private finish(outcome: TxOutcome): void {
    this.decided = outcome;
    this.done.abort();
  }

  pending(): TxOutcome {
    const best = this.best();
    return {
      txId: this.tx.id,
      status: "pending",
      reason: `${best.length} of ${this.needed} confirmations`,
      confirmations: best.length,
      memberErrors: { ...this.errors },
    };
  }
}

/** See the module comment. One client serves any number of transactions, concurrently. */
export class GatewayClient {
  private readonly targets: Target[];
  private readonly fetchImpl: typeof fetch;
  private readonly tls: GatewayTlsOptions | undefined;
  private readonly waitMsMax: number;
  private readonly retryDelayMs: number;
  /** raft: the member submits go to (rotated when one fails). */
  private raftTarget = 0;

  constructor(
    readonly genesis: Genesis,
    gateways: readonly GatewayEntry[],
    options: GatewayClientOptions = {},
  ) {
    this.targets = [];
    for (const g of gateways) {
      const member = genesis.memberByName(g.member);
      if (member === undefined) throw new GatewayConfigError(`gateway for '${g.member}': no such member in genesis`);
      if (!/^https?:\/\//.test(g.url)) throw new GatewayConfigError(`gateway for '${g.member}': '${g.url}' is not an http(s) URL`);
      if (this.targets.some((t) => t.member.index === member.index)) {
        throw new GatewayConfigError(`gateway for '${g.member}' is listed twice`);
      }
      const https = g.url.startsWith("https://");
      if (https && options.tls === undefined) {
        throw new GatewayConfigError(
          `gateway for '${g.member}': ${g.url} is HTTPS (mutual TLS): pass the tls option {cert, key, ca}, as \`consortium client tls-files --key KEY --genesis genesis.json --out DIR\` writes them`,
        );
      }
      this.targets.push({ member, url: g.url, https });
    }
    if (this.targets.length === 0) throw new GatewayConfigError("no gateways");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.tls = options.tls;
    this.waitMsMax = Math.min(options.waitMsMax ?? 10_000, 30_000);
    this.retryDelayMs = options.retryDelayMs ?? 250;
  }

  /** A client for a network directory's gateways.json (checked against the genesis' chain id). */
  static fromGatewaysFile(genesis: Genesis, file: GatewaysFile, options: GatewayClientOptions = {}): GatewayClient {
    if (file.chain_id !== toHex(genesis.chainId)) {
      throw new GatewayConfigError(
        `gateways.json is for chain ${file.chain_id.slice(0, 16)}…, the genesis is ${toHex(genesis.chainId).slice(0, 16)}…`,
      );
    }
    return new GatewayClient(genesis, file.gateways, options);
  }

  /** Confirmations a transaction needs: f+1 in pbft, 1 in raft. */
  get confirmationsNeeded(): number {
    return signaturesNeeded(this.genesis);
  }

  /**
   * Submit `tx` and wait until it is decided or `timeoutMs` passes. Never throws for what
   * members do: a member that is down, slow or lying shows in `memberErrors`.
   */
  async submitAndWait(tx: Transaction, options: SubmitOptions = {}): Promise<TxOutcome> {
    const tally = new Tally(tx, this.genesis, this.confirmationsNeeded);
    const timeoutMs = options.timeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    const timer = setTimeout(() => tally.done.abort(), timeoutMs);
    try {
      if (this.genesis.mode === "pbft") {
        await Promise.all(this.targets.map((t) => this.follow(t, tally, deadline)));
      } else {
        await this.followRaft(tally, deadline);
      }
    } finally {
      clearTimeout(timer);
      tally.done.abort();
    }
    return tally.decided ?? tally.pending();
  }

  /** pbft: keep one member busy with the transaction until it vouched, lied, or time is up. */
  private async follow(target: Target, tally: Tally, deadline: number): Promise<void> {
    const signal = tally.done.signal;
    while (!signal.aborted && Date.now() < deadline) {
      const started = Date.now();
      const verdict = await this.round(target, tally, deadline);
      if (verdict === "counted" || verdict === "invalid" || verdict === "final") return;
      // A failure, or a "not yet" that came back at once (a gateway not honouring wait_ms).
      if (verdict === "error" || Date.now() - started < this.retryDelayMs) await sleep(this.retryDelayMs, signal);
    }
  }

  /** raft: one member at a time (its followers forward to the leader); the next when it fails. */
  private async followRaft(tally: Tally, deadline: number): Promise<void> {
    const signal = tally.done.signal;
    let waited = 0;
    while (!signal.aborted && Date.now() < deadline) {
      const target = this.targets[this.raftTarget % this.targets.length]!;
      const started = Date.now();
      const verdict = await this.round(target, tally, deadline);
      if (verdict === "counted" || verdict === "final") return;
      waited = verdict === "waiting" ? waited + 1 : 0;
      // Down, lying or refusing, or twice no receipt within wait_ms (a member cut off from
      // the others): submit to the next one, as the Python client retransmits to another.
      if (verdict !== "waiting" || waited >= 2) {
        this.raftTarget += 1;
        waited = 0;
      }
      if (verdict === "error" || Date.now() - started < this.retryDelayMs) await sleep(this.retryDelayMs, signal);
    }
  }

  /**
   * One round with one member: (re)submit (safe: an id executes at most once, a copy is
   * answered with the first receipt), then ask for the receipt, each waiting up to wait_ms.
   */
  private async round(
    target: Target,
    tally: Tally,
    deadline: number,
  ): Promise<"counted" | "invalid" | "final" | "waiting" | "error"> {
    const { member } = target;
    const waitMs = (): number => Math.max(0, Math.min(this.waitMsMax, deadline - Date.now() - 200));
    try {
      const submitted = await this.request(target, "POST", `/v1/transactions?wait_ms=${waitMs()}`, tally, deadline, {
        transactions: [toBase64(encodeTransaction(tally.tx))],
      });
      const result = parseSubmitResult(submitted, tally.tx.id);
      if (result.status === "committed" && result.receipt !== null) return tally.onBundle(member, result.receipt);
      if (result.status === "rejected") {
        tally.onRejection(member, result.detail);
        return isFinalRejection(result.detail) ? "final" : "error";
      }
      const reply = await this.request(
        target,
        "GET",
        `/v1/transactions/${toHex(tally.tx.id)}/receipt?wait_ms=${waitMs()}`,
        tally,
        deadline,
      );
      return tally.onBundle(member, parseReceiptReply(reply, tally.tx.id));
    } catch (exc) {
      if (tally.done.signal.aborted) return "error";
      if (exc instanceof HttpError && exc.status === 404) {
        tally.errors[member.name] = "has no receipt yet";
        return "waiting";
      }
      tally.errors[member.name] = exc instanceof Error ? exc.message : String(exc);
      if (exc instanceof HttpError && exc.retryAfterMs !== null) {
        await sleep(Math.min(exc.retryAfterMs, deadline - Date.now()), tally.done.signal);
      }
      return "error";
    }
  }

  private async request(
    target: Target,
    method: "GET" | "POST",
    path: string,
    tally: Tally,
    deadline: number,
    body?: unknown,
  ): Promise<unknown> {
    // Each request ends at the deadline, when the transaction is decided, or 5 s past its wait.
    const controller = new AbortController();
    const stop = (): void => controller.abort();
    tally.done.signal.addEventListener("abort", stop, { once: true });
    const timer = setTimeout(stop, Math.max(0, Math.min(deadline - Date.now(), this.waitMsMax + 5_000)));
    try {
      const init: RequestInit = { method, signal: controller.signal, headers: { accept: "application/json" } };
      if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers = { accept: "application/json", "content-type": "application/json" };
      }
      let answer: Answer;
      if (target.https) {
        answer = await this.requestHttps(target, joinUrl(target.url, path), method, init, controller.signal);
      } else {
        let response: Response;
        try {
          response = await this.fetchImpl(joinUrl(target.url, path), init);
        } catch (exc) {
          const cause = (exc as { cause?: { code?: string; message?: string } }).cause;
          throw new Error(`unreachable: ${cause?.code ?? cause?.message ?? (exc as Error).message}`);
        }
        let text: string;
        try {
          text = await readCapped(response);
        } catch (exc) {
          controller.abort(); // (the rest of an endless body is not read)
          throw exc instanceof TooLong ? exc : new Error(`the answer broke off: ${(exc as Error).message}`);
        }
        answer = { status: response.status, retryAfter: response.headers.get("retry-after"), text };
      }
      const { text } = answer;
      if (answer.status < 200 || answer.status > 299) {
        let message = `HTTP ${answer.status}`;
        try {
          const err = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }).error;
          if (err && typeof err.code === "string") message += ` ${err.code}: ${String(err.message)}`;
        } catch {
          // not the gateway's error body: the status says enough
        }
        const retry = Number(answer.retryAfter);
        throw new HttpError(answer.status, message, answer.retryAfter !== null && Number.isFinite(retry) && retry > 0 ? retry * 1000 : null);
      }
      try {
        return JSON.parse(text) as unknown;
      } catch {
        throw new Error(`HTTP ${answer.status} with a body that is not JSON`);
      }
    } finally {
      clearTimeout(timer);
      tally.done.signal.removeEventListener("abort", stop);
    }
  }

  /** The keep-alive agent for one https:// member: mutual TLS 1.3, that member's key pinned. */
  private agentFor(target: Target): Promise<import("node:https").Agent> {
    target.agent ??= (async () => {
      const https = await import("node:https");
      const { X509Certificate } = await import("node:crypto");
      const tls = this.tls!;
      const { member } = target;
      return new https.Agent({
        keepAlive: true,
        maxSockets: 2,
        cert: tls.cert,
        key: tls.key,
        ca: tls.ca,
        ...(tls.passphrase === undefined ? {} : { passphrase: tls.passphrase }),
        minVersion: "TLSv1.3",
        maxVersion: "TLSv1.3",
        maxCachedSessions: 0, // (every connection is pinned in its own handshake)
        // Whatever NODE_TLS_REJECT_UNAUTHORIZED says: the chain to the network's issuer is
        // checked before anything is sent, and the pin below with it.
        rejectUnauthorized: true,
        // Not the hostname (members are named by key): the key genesis lists for THIS member.
        checkServerIdentity: (_host, cert) => pinError(X509Certificate, member, cert.raw),
      });
    })();
    return target.agent;
  }

  private async requestHttps(target: Target, url: string, method: string, init: RequestInit, signal: AbortSignal): Promise<Answer> {
    const https = await import("node:https");
    const { X509Certificate } = await import("node:crypto");
    const agent = await this.agentFor(target);
    const { member } = target;
    return new Promise<Answer>((resolve, reject) => {
      let settled = false;
      const fail = (exc: Error): void => {
        if (settled) return;
        settled = true;
        reject(exc);
        req.destroy();
      };
      const headers: Record<string, string> = { ...(init.headers as Record<string, string>) };
      if (typeof init.body === "string") headers["content-length"] = String(Buffer.byteLength(init.body));
      const req = https.request(url, { method, agent, headers }, (res) => {
        // (the pin again, on the socket that answers: defence in depth, if a session were
        // ever resumed without checkServerIdentity)
        const peer = (res.socket as import("node:tls").TLSSocket | null)?.getPeerCertificate?.(false);
        const problem = peer?.raw ? pinError(X509Certificate, member, peer.raw) : new Error(`${member.name}'s gateway presented no TLS certificate`);
        if (problem !== undefined) return fail(problem);
        const chunks: Buffer[] = [];
        let length = 0;
        res.on("data", (chunk: Buffer) => {
          length += chunk.length;
          if (length > ANSWER_BYTES_MAX) fail(new TooLong());
          else chunks.push(chunk);
        });
        res.on("end", () => {
          if (settled) return;
          settled = true;
          const retry = res.headers["retry-after"];
          resolve({ status: res.statusCode ?? 0, retryAfter: typeof retry === "string" ? retry : null, text: Buffer.concat(chunks).toString("utf-8") });
        });
        res.on("error", (exc) => fail(new Error(`the answer broke off: ${exc.message}`)));
      });
      req.on("error", (exc: Error & { code?: string }) => {
        const pinned = exc.message.includes("presented TLS key");
        fail(new Error(pinned ? exc.message : `unreachable (https): ${exc.code ?? ""}${exc.code ? ": " : ""}${exc.message}`));
      });
      if (signal.aborted) return fail(new Error("aborted"));
      signal.addEventListener("abort", () => fail(new Error("aborted")), { once: true });
      if (typeof init.body === "string") req.write(init.body);
      req.end();
    });
  }
}

interface SubmitResult {
  readonly status: string;
  readonly detail: string;
  readonly receipt: Uint8Array | null;
}

function parseSubmitResult(doc: unknown, txId: Uint8Array): SubmitResult {
  const results = (doc as { results?: unknown }).results;
  if (!Array.isArray(results) || results.length !== 1) throw new Error("answered a submit without one result");
  const r = results[0] as { tx_id?: unknown; status?: unknown; detail?: unknown; receipt?: unknown };
  if (typeof r !== "object" || r === null || typeof r.status !== "string") throw new Error("answered a submit with a malformed result");
  if (typeof r.tx_id === "string" && r.tx_id !== "" && r.tx_id !== toHex(txId)) {
    throw new Error("answered a submit for another transaction id");
  }
  let receipt: Uint8Array | null = null;
  if (typeof r.receipt === "string") {
    try {
      receipt = fromBase64(r.receipt);
    } catch {
      throw new Error("answered with a receipt that is not base64");
    }
  }
  return { status: r.status, detail: typeof r.detail === "string" ? r.detail : "", receipt };
}

function parseReceiptReply(doc: unknown, txId: Uint8Array): Uint8Array {
  const d = doc as { tx_id?: unknown; receipt?: unknown };
  if (typeof d !== "object" || d === null || typeof d.receipt !== "string") throw new Error("answered a receipt request without a receipt");
  if (d.tx_id !== undefined && d.tx_id !== toHex(txId)) throw new Error("answered with the receipt of another transaction");
  try {
    return fromBase64(d.receipt);
  } catch {
    throw new Error("answered with a receipt that is not base64");
  }
}

/** Undefined when the DER certificate carries the Ed25519 key genesis lists for `member`; else why not. */
function pinError(X509Certificate: X509Class, member: Member, der: Uint8Array): Error | undefined {
  let key: Uint8Array | null;
  try {
    key = certificateKey(X509Certificate, der);
  } catch (exc) {
    return new Error(`${member.name}'s gateway presented TLS key (unreadable certificate: ${(exc as Error).message})`);
  }
  if (key === null) return new Error(`${member.name}'s gateway presented TLS key of another kind than Ed25519`);
  if (!equalBytes(key, member.publicKey)) {
    return new Error(
      `${member.name}'s gateway presented TLS key ${toHex(key).slice(0, 16)}… but genesis lists ${toHex(member.publicKey).slice(0, 16)}… for ${member.name}: is the URL in gateways.json another member's?`,
    );
  }
  return undefined;
}

/** Decode a base64 receipt bundle as the gateway sends it (for callers that fetch their own). */
export function bundleFromBase64(text: string): Bundle {
  return decodeBundle(fromBase64(text));
}
