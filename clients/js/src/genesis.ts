/**
 * The genesis file (consortium/ledger/genesis.py): the network's members, clients, mode and
 * parameters. Its identity, the chain id, is SHA-256 of the canonical msgpack encoding of its
 * contents as a fixed-order array, so JSON whitespace or key order never change it.
 */

import { fromHex, toHex } from "./bytes.js";
import { pyRepr, type MsgValue } from "./codec.js";
import { isValidPublicKey } from "./ed25519.js";
import { digestOf } from "./hash.js";

export const GENESIS_FORMAT = "consortium-genesis/1";
export type Mode = "pbft" | "raft";
export const MODES: readonly Mode[] = ["pbft", "raft"];

/** A genesis file that cannot be used; the message names the file, the key and the fix. */
export class GenesisError extends Error {
  override name = "GenesisError";
}

const DAY_MS = 24 * 3600 * 1000;

/** Network-wide parameters, in the order they are hashed (genesis.py `Params`), with defaults. */
export const PARAM_DEFAULTS = {
  batch_txs_max: 512,
  batch_bytes_max: 4 * 1024 * 1024,
  batch_delay_ms: 2,
  checkpoint_interval: 32,
  window: 64,
  tx_ttl_max_ms: 10 * 60 * 1000,
  tx_bytes_max: 64 * 1024,
  ops_per_tx_max: 64,
  key_bytes_max: 1024,
  value_bytes_max: 32 * 1024,
  timestamp_skew_ms: 30_000,
  frame_bytes_max: 16 * 1024 * 1024,
  request_timeout_ms: 2_000,
} as const;
export type ParamName = keyof typeof PARAM_DEFAULTS;
export type Params = Record<ParamName, number>;
const PARAM_NAMES = Object.keys(PARAM_DEFAULTS) as ParamName[];

const PARAMS_MAX: Params = {
  batch_txs_max: 100_000,
  batch_bytes_max: 2 ** 30,
  batch_delay_ms: 60_000,
  checkpoint_interval: 2 ** 16,
  window: 2 ** 17,
  tx_ttl_max_ms: 366 * DAY_MS,
  tx_bytes_max: 2 ** 29,
  ops_per_tx_max: 2 ** 16,
  key_bytes_max: 2 ** 20,
  value_bytes_max: 2 ** 29,
  timestamp_skew_ms: 366 * DAY_MS,
  frame_bytes_max: 2 ** 30,
  request_timeout_ms: DAY_MS,
};

export interface Member {
  readonly index: number;
  readonly name: string;
  readonly publicKey: Uint8Array;
  readonly peerAddress: string;
  readonly clientAddress: string;
}

export interface Client {
  readonly name: string;
  readonly publicKey: Uint8Array;
}

/** A loaded genesis: use `loadGenesis` / `parseGenesis`, which validate it as a member does. */
export class Genesis {
  /** SHA-256 of the canonical encoding of the genesis (every signature includes it). */
  readonly chainId: Uint8Array;

  constructor(
    readonly chainName: string,
    readonly mode: Mode,
    readonly createdMs: number,
    readonly members: readonly Member[],
    readonly clients: readonly Client[],
    readonly params: Readonly<Params>,
  ) {
    this.chainId = digestOf(this.asArray());
  }

  /** The fixed-order array the chain id hashes (genesis.py `as_array`). */
  asArray(): MsgValue[] {
    return [
      GENESIS_FORMAT,
      this.chainName,
      this.mode,
      this.createdMs,
      this.members.map((m) => [m.name, m.publicKey, m.peerAddress, m.clientAddress]),
      this.clients.map((c) => [c.name, c.publicKey]),
      PARAM_NAMES.map((name) => this.params[name]),
    ];
  }

  get n(): number {
    return this.members.length;
  }

  /** Faults tolerated: Byzantine with n >= 3f+1 in pbft, crashes with n >= 2f+1 in raft. */
  get f(): number {
    return this.mode === "pbft" ? Math.floor((this.n - 1) / 3) : Math.floor((this.n - 1) / 2);
  }

  /** pbft: ceil((n+f+1)/2); raft: a majority. */
  get quorum(): number {
    return this.mode === "pbft" ? Math.floor((this.n + this.f + 2) / 2) : Math.floor(this.n / 2) + 1;
  }

  memberByName(name: string): Member | undefined {
    return this.members.find((m) => m.name === name);
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isObject(v: unknown): v is { [key: string]: Json } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

function sortedKeys(keys: Iterable<string>): string {
  return [...keys].sort().join(", ");
}

function onlyKeys(obj: unknown, allowed: string[], at: string): { [key: string]: Json } {
  if (!isObject(obj)) throw new GenesisError(`${at}: expected an object`);
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) throw new GenesisError(`${at}: unknown key '${key}' (known: ${sortedKeys(allowed)})`);
  }
  return obj;
}

function str(obj: { [key: string]: Json }, key: string, at: string): string {
  const v = obj[key];
  if (typeof v !== "string" || !v || [...v].length > 64) {
    throw new GenesisError(`${at}: '${key}' must be a non-empty string of at most 64 characters`);
  }
  return v;
}

function publicKey(obj: { [key: string]: Json }, at: string): Uint8Array {
  const v = obj["public_key"];
  let raw: Uint8Array = new Uint8Array(0);
  try {
    raw = typeof v === "string" ? fromHex(v) : raw;
  } catch {
    raw = new Uint8Array(0);
  }
  if (raw.length !== 32) throw new GenesisError(`${at}: 'public_key' must be 64 hex characters (an Ed25519 public key)`);
  if (!isValidPublicKey(raw)) {
    throw new GenesisError(
      `${at}: public key ${toHex(raw).slice(0, 16)}… is not a valid Ed25519 point of prime order ` +
        "(small-order and non-canonical keys are refused)",
    );
  }
  return raw;
}

const ADDRESS_EXAMPLES = "e.g. 10.0.0.1:7101, node1.example.org:7101 or [fd00::1]:7101";
const HOST_LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function isIPv4(text: string): boolean {
  const parts = text.split(".");
  return parts.length === 4 && parts.every((p) => /^[0-9]{1,3}$/.test(p) && Number(p) <= 255 && !(p.length > 1 && p.startsWith("0")));
}

function isIPv6(text: string): boolean {
  let body = text;
  let groupsNeeded = 8;
  const lastColon = body.lastIndexOf(":");
  if (body.includes(".")) {
    if (!isIPv4(body.slice(lastColon + 1))) return false;
    body = body.slice(0, lastColon + 1) + "0:0";
  }
  const halves = body.split("::");
  if (halves.length > 2) return false;
  const group = /^[0-9A-Fa-f]{1,4}$/;
  const groups = (s: string): string[] | null => {
    if (s === "") return [];
    const g = s.split(":");
    return g.every((x) => group.test(x)) ? g : null;
  };
  if (halves.length === 1) {
    const g = groups(halves[0]!);
    return g !== null && g.length === groupsNeeded;
  }
  const left = groups(halves[0]!);
  const right = groups(halves[1]!);
  if (left === null || right === null) return false;
  groupsNeeded -= left.length + right.length;
  return groupsNeeded >= 1;
}

/** 'host:port' as genesis.py `parse_advertised_address` accepts it; GenesisError otherwise. */
export function parseAddress(text: string, at: string): [string, number] {
  const bad = `${at}: '${text}' is not 'host:port' with a port in 1..65535 (${ADDRESS_EXAMPLES})`;
  if (text.includes("/")) throw new GenesisError(`${at}: '${text}' is not 'host:port': no scheme or path, just host:port`);
  const colon = text.lastIndexOf(":");
  const host = colon >= 0 ? text.slice(0, colon) : "";
  const portText = colon >= 0 ? text.slice(colon + 1) : "";
  if (colon < 0 || !host || !/^[0-9]+$/.test(portText) || !(Number(portText) > 0 && Number(portText) < 65536)) {
    throw new GenesisError(bad);
  }
  const port = Number(portText);
  let bare = host;
  if (host.startsWith("[") || host.endsWith("]")) {
    if (!(host.startsWith("[") && host.endsWith("]") && isIPv6(host.slice(1, -1)))) {
      throw new GenesisError(`${at}: '${host}' is not an IPv6 address in brackets`);
    }
    bare = host.slice(1, -1);
  } else if (host.includes(":") && isIPv6(host)) {
    throw new GenesisError(`${at}: '${text}': write an IPv6 address in brackets, e.g. [${host}]:7101`);
  } else if (host.split(".").every((part) => /^[0-9]+$/.test(part))) {
    if (!isIPv4(host)) throw new GenesisError(`${at}: '${host}' is not an IPv4 address (${ADDRESS_EXAMPLES})`);
  } else if (host.includes(":") || host.length > 253 || !host.split(".").every((x) => HOST_LABEL.test(x))) {
    throw new GenesisError(`${at}: '${host}' is not a host name or IP address (${ADDRESS_EXAMPLES})`);
  }
  if (bare === "0.0.0.0" || bare === "::") {
    throw new GenesisError(
      `${at}: '${text}' means 'listen on every interface'; genesis lists the address other members and clients connect to`,
    );
  }
  return [bare, port];
}

function address(obj: { [key: string]: Json }, key: string, at: string): string {
  const v = obj[key];
  if (typeof v !== "string") throw new GenesisError(`${at}: '${key}' must be 'host:port'`);
  parseAddress(v, `${at}: '${key}'`);
  return v;
}

function validateParams(params: { [key: string]: unknown }, where: string): Params {
  const out = {} as Params;
  for (const name of PARAM_NAMES) {
    const v = params[name];
    if (!isInt(v) || v < 0) throw new GenesisError(`${where}: params.${name} must be a non-negative integer`);
    if (v > PARAMS_MAX[name]) {
      const fmt = (n: number): string => n.toLocaleString("en-US");
      throw new GenesisError(
        `${where}: params.${name} (${fmt(v)}) is larger than the most a member accepts (${fmt(PARAMS_MAX[name])})`,
      );
    }
    out[name] = v;
  }
  for (const name of ["batch_txs_max", "checkpoint_interval", "window", "tx_bytes_max"] as const) {
    if (out[name] <= 0) throw new GenesisError(`${where}: params.${name} must be positive`);
  }
  if (out.window % out.checkpoint_interval) {
    throw new GenesisError(
      `${where}: params.window (${out.window}) must be a multiple of params.checkpoint_interval (${out.checkpoint_interval})`,
    );
  }
  if (out.window < 2 * out.checkpoint_interval) {
    throw new GenesisError(
      `${where}: params.window must be at least twice params.checkpoint_interval, or the primary stalls at every checkpoint`,
    );
  }
  if (out.tx_bytes_max * 2 > out.frame_bytes_max) {
    throw new GenesisError(`${where}: params.frame_bytes_max must be at least 2x tx_bytes_max`);
  }
  if (out.timestamp_skew_ms * 4 > out.tx_ttl_max_ms) {
    throw new GenesisError(
      `${where}: params.timestamp_skew_ms (${out.timestamp_skew_ms}) must be at most params.tx_ttl_max_ms / 4 ` +
        `(${Math.floor(out.tx_ttl_max_ms / 4)}): lower timestamp_skew_ms or raise tx_ttl_max_ms`,
    );
  }
  return out;
}

/**
 * Read a genesis file's text, with the checks genesis.py `Genesis.from_json` makes (and its
 * messages); GenesisError says what is wrong. (JSON cannot tell 5 from 5.0 here: the node
 * refuses a float where an integer belongs, this reader takes an integral one.)
 */
export function parseGenesis(text: string, where = "genesis.json"): Genesis {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (exc) {
    throw new GenesisError(`${where}: not valid JSON: ${(exc as Error).message}`);
  }
  if (!isObject(doc)) throw new GenesisError(`${where}: expected a JSON object at the top level`);
  const known = ["format", "chain_name", "mode", "created_ms", "members", "clients", "params"];
  for (const key of Object.keys(doc)) {
    if (!known.includes(key)) throw new GenesisError(`${where}: unknown key '${key}' (known: ${sortedKeys(known)})`);
  }
  if (doc["format"] !== GENESIS_FORMAT) throw new GenesisError(`${where}: 'format' must be '${GENESIS_FORMAT}'`);
  const mode = doc["mode"];
  if (mode !== "pbft" && mode !== "raft") {
    throw new GenesisError(`${where}: 'mode' must be one of ${MODES.join(", ")}, not ${pyRepr(mode)}`);
  }
  const chainName = doc["chain_name"];
  if (typeof chainName !== "string" || !chainName) throw new GenesisError(`${where}: 'chain_name' must be a non-empty string`);
  const createdMs = doc["created_ms"];
  if (!isInt(createdMs) || createdMs < 0) throw new GenesisError(`${where}: 'created_ms' must be a non-negative integer`);
  const membersDoc = doc["members"];
  if (!Array.isArray(membersDoc) || membersDoc.length === 0) throw new GenesisError(`${where}: 'members' must be a non-empty list`);
  const members: Member[] = membersDoc.map((m, i) => {
    const at = `${where}: members[${i}]`;
    const obj = onlyKeys(m, ["name", "public_key", "peer_address", "client_address"], at);
    return {
      index: i,
      name: str(obj, "name", at),
      publicKey: publicKey(obj, at),
      peerAddress: address(obj, "peer_address", at),
      clientAddress: address(obj, "client_address", at),
    };
  });
  const clientsDoc = doc["clients"] ?? [];
  if (!Array.isArray(clientsDoc)) throw new GenesisError(`${where}: 'clients' must be a list`);
  const clients: Client[] = clientsDoc.map((c, i) => {
    const at = `${where}: clients[${i}]`;
    const obj = onlyKeys(c, ["name", "public_key"], at);
    return { name: str(obj, "name", at), publicKey: publicKey(obj, at) };
  });
  const paramsDoc = doc["params"] ?? {};
  if (!isObject(paramsDoc)) throw new GenesisError(`${where}: 'params' must be an object`);
  for (const key of Object.keys(paramsDoc)) {
    if (!(PARAM_NAMES as string[]).includes(key)) {
      throw new GenesisError(`${where}: unknown parameter 'params.${key}' (known: ${sortedKeys(PARAM_NAMES)})`);
    }
  }
  const params = validateParams({ ...PARAM_DEFAULTS, ...paramsDoc }, where);
  const names = [...members.map((m) => m.name), ...clients.map((c) => c.name)];
  const dup = [...new Set(names.filter((x, i) => names.indexOf(x) !== i))].sort();
  if (dup.length) throw new GenesisError(`${where}: duplicate names [${dup.map((d) => `'${d}'`).join(", ")}]`);
  const keys = [...members, ...clients].map((x) => toHex(x.publicKey));
  if (new Set(keys).size !== keys.length) throw new GenesisError(`${where}: a public key is listed twice`);
  if (mode === "pbft" && members.length < 4) {
    throw new GenesisError(`${where}: pbft needs at least 4 members (n = 3f+1 with f >= 1); got ${members.length}`);
  }
  return new Genesis(chainName, mode, createdMs, members, clients, params);
}

/** Read and check a genesis file (Node: reads the file). */
export async function loadGenesis(path: string): Promise<Genesis> {
  const { readFile } = await import("node:fs/promises");
  let text: string;
  try {
    text = await readFile(path, "utf-8");
  } catch (exc) {
    throw new GenesisError(`${path}: cannot read genesis file: ${(exc as Error).message}`);
  }
  return parseGenesis(text, path);
}
