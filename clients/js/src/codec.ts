/**
 * The canonical msgpack encoding, exactly as consortium/crypto/codec.py: `pack` always chooses
 * the shortest form (msgpack-python's `packb(use_bin_type=True)`), and `unpackCanonical` decodes
 * with the node's limits and refuses the bytes unless re-encoding the value gives them back.
 *
 * Values: `null`, booleans, integers (`number` when a safe integer, else `bigint`; -2^63 ..
 * 2^64-1), strings (UTF-8), `Uint8Array` (bin), arrays. Also, only so that the verdicts equal
 * the node's: `MsgMap` (the empty map), `MsgExt` (an empty extension value of type 0..127) and
 * `MsgFloat`: decoded, then refused by `unpackCanonical` as the node refuses them.
 */

import { equalBytes, toHex } from "./bytes.js";

/** Bytes that are not a well-formed, canonical value of the expected shape. */
export class WireFormatError extends Error {
  override name = "WireFormatError";
}

/** A msgpack map (the wire format has none; the node's decoder accepts only the empty one). */
export class MsgMap {
  constructor(readonly entries: ReadonlyArray<readonly [MsgValue, MsgValue]> = []) {}
}

/** A msgpack extension value (type 0..127). */
export class MsgExt {
  constructor(
    readonly type: number,
    readonly data: Uint8Array,
  ) {}
}

/** A decoded float: never part of the wire format; `unpackCanonical` refuses it. */
export class MsgFloat {
  constructor(readonly value: number) {}
}

export type MsgValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | MsgValue[]
  | MsgMap
  | MsgExt
  | MsgFloat;

// The limits codec.py passes to every unpackb.
export const MAX_BIN = 16 * 1024 * 1024;
export const MAX_STR = 1024 * 1024;
export const MAX_ARRAY = 1_000_000;
export const MAX_MAP = 0;
export const MAX_EXT = 0;
/** msgpack-python's C decoder holds at most 1024 open containers (arrays or maps). */
export const MAX_DEPTH = 1024;

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);

// --- encoding ---------------------------------------------------------------------------------

class Writer {
  private buf = new Uint8Array(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  uint(value: number | bigint, size: 1 | 2 | 4 | 8): void {
    this.reserve(size);
    let v = BigInt(value);
    for (let i = size - 1; i >= 0; i--) {
      this.buf[this.len + i] = Number(v & 0xffn);
      v >>= 8n;
    }
    this.len += size;
  }

  bytes(data: Uint8Array): void {
    this.reserve(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

const textEncoder = new TextEncoder();

function encodeInt(w: Writer, n: bigint): void {
  if (n >= 0n) {
    if (n < 128n) w.byte(Number(n));
    else if (n <= 0xffn) (w.byte(0xcc), w.uint(n, 1));
    else if (n <= 0xffffn) (w.byte(0xcd), w.uint(n, 2));
    else if (n <= 0xffffffffn) (w.byte(0xce), w.uint(n, 4));
    else if (n <= U64_MAX) (w.byte(0xcf), w.uint(n, 8));
    else throw new RangeError(`integer ${n} does not fit msgpack (at most 2^64-1)`);
    return;
  }
  const twos = (bits: bigint): bigint => (1n << bits) + n;
  if (n >= -32n) w.byte(Number(twos(8n)));
  else if (n >= -128n) (w.byte(0xd0), w.uint(twos(8n), 1));
  else if (n >= -32768n) (w.byte(0xd1), w.uint(twos(16n), 2));
  else if (n >= -(1n << 31n)) (w.byte(0xd2), w.uint(twos(32n), 4));
  else if (n >= I64_MIN) (w.byte(0xd3), w.uint(twos(64n), 8));
  else throw new RangeError(`integer ${n} does not fit msgpack (at least -2^63)`);
}

function encodeLength(w: Writer, n: number, fix: number | null, fixMax: number, codes: [number, number, number]): void {
  if (fix !== null && n <= fixMax) w.byte(fix | n);
  else if (codes[0] !== 0 && n <= 0xff) (w.byte(codes[0]), w.uint(n, 1));
  else if (n <= 0xffff) (w.byte(codes[1]), w.uint(n, 2));
  else if (n <= 0xffffffff) (w.byte(codes[2]), w.uint(n, 4));
  else throw new RangeError(`length ${n} does not fit msgpack`);
}

function encodeValue(w: Writer, v: MsgValue, depth: number): void {
  if (depth > 4096) throw new RangeError("value nested too deeply to encode");
  if (v === null) w.byte(0xc0);
  else if (v === false) w.byte(0xc2);
  else if (v === true) w.byte(0xc3);
  else if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) {
      throw new TypeError(`${v} is not an integer the wire format can hold (floats are not part of it; pass a bigint beyond 2^53)`);
    }
    encodeInt(w, BigInt(v));
  } else if (typeof v === "bigint") encodeInt(w, v);
  else if (typeof v === "string") {
    const data = textEncoder.encode(v);
    encodeLength(w, data.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
    w.bytes(data);
  } else if (v instanceof Uint8Array) {
    encodeLength(w, v.length, null, -1, [0xc4, 0xc5, 0xc6]);
    w.bytes(v);
  } else if (Array.isArray(v)) {
    encodeLength(w, v.length, 0x90, 15, [0, 0xdc, 0xdd]);
    for (const item of v) encodeValue(w, item, depth + 1);
  } else if (v instanceof MsgMap) {
    encodeLength(w, v.entries.length, 0x80, 15, [0, 0xde, 0xdf]);
    for (const [k, x] of v.entries) {
      encodeValue(w, k, depth + 1);
      encodeValue(w, x, depth + 1);
    }
  } else if (v instanceof MsgExt) {
    const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
    const code = fixed[v.data.length];
    if (code !== undefined) w.byte(code);
    else encodeLength(w, v.data.length, null, -1, [0xc7, 0xc8, 0xc9]);
    w.byte(v.type & 0xff);
    w.bytes(v.data);
  } else if (v instanceof MsgFloat) {
    w.byte(0xcb);
    const b = new DataView(new ArrayBuffer(8));
    b.setFloat64(0, v.value);
    w.bytes(new Uint8Array(b.buffer));
  } else {
    throw new TypeError(`cannot encode ${typeof v}`);
  }
}

/** Canonical bytes of `value` (codec.py `pack`). Throws on a non-integer number. */
export function pack(value: MsgValue): Uint8Array {
  const w = new Writer();
  encodeValue(w, value, 0);
  return w.result();
}

// --- decoding ---------------------------------------------------------------------------------

const textDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

class Reader {
  at = 0;
  constructor(readonly data: Uint8Array) {}

  need(n: number): void {
    if (this.at + n > this.data.length) throw new WireFormatError("undecodable msgpack: incomplete input");
  }

  u8(): number {
    this.need(1);
    return this.data[this.at++]!;
  }

  uint(size: number): bigint {
    this.need(size);
    let v = 0n;
    for (let i = 0; i < size; i++) v = (v << 8n) | BigInt(this.data[this.at + i]!);
    this.at += size;
    return v;
  }

  num(size: number): number {
    return Number(this.uint(size));
  }

  take(n: number): Uint8Array {
    this.need(n);
    const out = this.data.slice(this.at, this.at + n);
    this.at += n;
    return out;
  }
}

function intValue(n: bigint): number | bigint {
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

function signed(v: bigint, bits: bigint): bigint {
  return v >= 1n << (bits - 1n) ? v - (1n << bits) : v;
}

function limit(what: string, n: number, max: number): void {
  if (n > max) throw new WireFormatError(`undecodable msgpack: ${n} exceeds max_${what}_len(${max})`);
}

function decodeValue(r: Reader, depth: number): MsgValue {
  const b = r.u8();
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if ((b & 0xe0) === 0xa0) return decodeStr(r, b & 0x1f);
  if ((b & 0xf0) === 0x90) return decodeArray(r, b & 0x0f, depth);
  if ((b & 0xf0) === 0x80) return decodeMap(r, b & 0x0f, depth);
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return decodeBin(r, r.num(1));
    case 0xc5:
      return decodeBin(r, r.num(2));
    case 0xc6:
      return decodeBin(r, r.num(4));
    case 0xc7:
      return decodeExt(r, r.num(1));
    case 0xc8:
      return decodeExt(r, r.num(2));
    case 0xc9:
      return decodeExt(r, r.num(4));
    case 0xca: {
      const raw = r.take(4);
      return new MsgFloat(new DataView(raw.buffer, raw.byteOffset, 4).getFloat32(0));
    }
    case 0xcb: {
      const raw = r.take(8);
      return new MsgFloat(new DataView(raw.buffer, raw.byteOffset, 8).getFloat64(0));
    }
    case 0xcc:
      return intValue(r.uint(1));
    case 0xcd:
      return intValue(r.uint(2));
    case 0xce:
      return intValue(r.uint(4));
    case 0xcf:
      return intValue(r.uint(8));
    case 0xd0:
      return intValue(signed(r.uint(1), 8n));
    case 0xd1:
      return intValue(signed(r.uint(2), 16n));
    case 0xd2:
      return intValue(signed(r.uint(4), 32n));
    case 0xd3:
      return intValue(signed(r.uint(8), 64n));
    case 0xd4:
      return decodeExt(r, 1);
    case 0xd5:
      return decodeExt(r, 2);
    case 0xd6:
      return decodeExt(r, 4);
    case 0xd7:
      return decodeExt(r, 8);
    case 0xd8:
      return decodeExt(r, 16);
    case 0xd9:
      return decodeStr(r, r.num(1));
    case 0xda:
      return decodeStr(r, r.num(2));
    case 0xdb:
      return decodeStr(r, r.num(4));
    case 0xdc:
      return decodeArray(r, r.num(2), depth);
    case 0xdd:
      return decodeArray(r, r.num(4), depth);
    case 0xde:
      return decodeMap(r, r.num(2), depth);
    case 0xdf:
      return decodeMap(r, r.num(4), depth);
    default:
      throw new WireFormatError(`undecodable msgpack: reserved byte 0x${b.toString(16)}`);
  }
}

function decodeStr(r: Reader, n: number): string {
  limit("str", n, MAX_STR);
  const raw = r.take(n);
  try {
    return textDecoder.decode(raw);
  } catch {
    throw new WireFormatError("undecodable msgpack: string is not UTF-8");
  }
}

function decodeBin(r: Reader, n: number): Uint8Array {
  limit("bin", n, MAX_BIN);
  return r.take(n);
}

function decodeExt(r: Reader, n: number): MsgExt {
  limit("ext", n, MAX_EXT);
  const type = r.u8();
  if (type === 0xff) throw new WireFormatError("undecodable msgpack: invalid timestamp data (length 0)");
  if (type >= 0x80) throw new WireFormatError("undecodable msgpack: code must be 0~127");
  return new MsgExt(type, r.take(n));
}

function enter(depth: number): number {
  if (depth + 1 > MAX_DEPTH) throw new WireFormatError("undecodable msgpack: nested too deeply");
  return depth + 1;
}

function decodeArray(r: Reader, n: number, depth: number): MsgValue[] {
  limit("array", n, MAX_ARRAY);
  const inner = enter(depth);
  const out: MsgValue[] = [];
  for (let i = 0; i < n; i++) out.push(decodeValue(r, inner));
  return out;
}

function decodeMap(r: Reader, n: number, depth: number): MsgMap {
  limit("map", n, MAX_MAP);
  enter(depth);
  return new MsgMap();
}

/** Decode one value with the node's limits (codec.py `unpack`); only throws WireFormatError. */
export function unpack(data: Uint8Array, maxLen?: number): MsgValue {
  if (maxLen !== undefined && data.length > maxLen) {
    throw new WireFormatError(`value of ${data.length} bytes exceeds the limit of ${maxLen}`);
  }
  const r = new Reader(data);
  const value = decodeValue(r, 0);
  if (r.at !== data.length) throw new WireFormatError("undecodable msgpack: extra data");
  return value;
}

/** Refuse what decodes but is no wire value: floats, the empty map and the empty extension
 * value (codec.py `_refuse_non_wire`). */
function refuseNonWire(value: MsgValue): void {
  const stack: MsgValue[] = [value];
  while (stack.length) {
    const v = stack.pop()!;
    if (Array.isArray(v)) for (const item of v) stack.push(item);
    else if (v instanceof MsgFloat) throw new WireFormatError("floats are not part of the wire format");
    else if (v instanceof MsgMap) throw new WireFormatError("maps are not part of the wire format");
    else if (v instanceof MsgExt) throw new WireFormatError("extension values are not part of the wire format");
  }
}

/** Decode and insist `data` is the canonical encoding of what it decodes to (codec.py). */
export function unpackCanonical(data: Uint8Array, maxLen?: number): MsgValue {
  const value = unpack(data, maxLen);
  refuseNonWire(value);
  let again: Uint8Array;
  try {
    again = pack(value);
  } catch (exc) {
    throw new WireFormatError(`value cannot be re-encoded: ${(exc as Error).message}`);
  }
  if (!equalBytes(again, data)) throw new WireFormatError("non-canonical encoding");
  return value;
}

// --- shape checks, with codec.py's messages ---------------------------------------------------

export function asList(v: MsgValue | undefined, n: number | null = null, what = "value"): MsgValue[] {
  if (!Array.isArray(v)) throw new WireFormatError(`${what}: expected an array`);
  if (n !== null && v.length !== n) throw new WireFormatError(`${what}: expected ${n} fields, got ${v.length}`);
  return v;
}

export const INT64_MAX = (1n << 63n) - 1n;

/** A non-negative integer up to `hi` (default 2^63-1), returned as a number when safe. */
export function asInt(v: MsgValue | undefined, what = "value", lo: bigint = 0n, hi: bigint = INT64_MAX): number | bigint {
  if (typeof v !== "number" && typeof v !== "bigint") throw new WireFormatError(`${what}: expected an integer`);
  const n = BigInt(v);
  if (n < lo || n > hi) throw new WireFormatError(`${what}: ${n} outside [${lo}, ${hi}]`);
  return v;
}

export function asBytes(v: MsgValue | undefined, what = "value", size: number | null = null, maxLen = MAX_BIN): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new WireFormatError(`${what}: expected bytes`);
  if (size !== null && v.length !== size) throw new WireFormatError(`${what}: expected ${size} bytes, got ${v.length}`);
  if (v.length > maxLen) throw new WireFormatError(`${what}: ${v.length} bytes exceeds ${maxLen}`);
  return v;
}

export function asStr(v: MsgValue | undefined, what = "value", maxLen = 256): string {
  if (typeof v !== "string") throw new WireFormatError(`${what}: expected a string`);
  if ([...v].length > maxLen) throw new WireFormatError(`${what}: string longer than ${maxLen}`);
  return v;
}

/** Python's `repr` of a decoded value, for messages that quote one. */
export function pyRepr(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : pyFloatRepr(v);
  if (typeof v === "bigint") return String(v);
  if (typeof v === "string") return pyStrRepr(v);
  if (v instanceof Uint8Array) {
    let s = "";
    for (const b of v) {
      if (b === 0x5c) s += "\\\\";
      else if (b === 0x27) s += "\\'";
      else if (b === 0x09) s += "\\t";
      else if (b === 0x0a) s += "\\n";
      else if (b === 0x0d) s += "\\r";
      else if (b < 0x20 || b >= 0x7f) s += "\\x" + toHex(Uint8Array.of(b));
      else s += String.fromCharCode(b);
    }
    return `b'${s}'`;
  }
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v as Record<string, unknown>).map(([k, x]) => `${pyStrRepr(k)}: ${pyRepr(x)}`).join(", ")}}`;
  }
  return String(v);
}

function pyFloatRepr(v: number): string {
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  return String(v);
}

function pyStrRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = "";
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += "\\" + quote;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (c < 0x20 || c === 0x7f) out += "\\x" + c.toString(16).padStart(2, "0");
    else if (c >= 0x80 && c < 0xa0) out += "\\x" + c.toString(16).padStart(2, "0");
    else if (c >= 0xd800 && c < 0xe000) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return quote + out + quote;
}
