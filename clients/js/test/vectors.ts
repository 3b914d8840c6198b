/** Loading tests/vectors/shared.json (written by scripts/make_vectors.py from the Python code). */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { concatBytes, fromHex, utf8 } from "../src/bytes.js";
import { MsgExt, MsgMap, type MsgValue } from "../src/codec.js";

export const VECTORS_PATH =
  process.env["CONSORTIUM_VECTORS"] ?? fileURLToPath(new URL("../../../../tests/vectors/shared.json", import.meta.url));

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any; // the file's shape is the generator's; each test reads what it needs

export const VECTORS: Json = JSON.parse(readFileSync(VECTORS_PATH, "utf-8"));

/** A value descriptor (see scripts/make_vectors.py) as a MsgValue. */
export function buildValue(d: Json[]): MsgValue {
  const tag = d[0] as string;
  switch (tag) {
    case "nil":
      return null;
    case "bool":
      return d[1] as boolean;
    case "int": {
      const n = BigInt(d[1] as string);
      return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
    }
    case "str":
      return d[1] as string;
    case "bin":
      return fromHex(d[1] as string);
    case "array":
      return (d[1] as Json[][]).map(buildValue);
    case "map":
      return new MsgMap();
    case "ext":
      return new MsgExt(d[1] as number, fromHex(d[2] as string));
    case "str_repeat":
      return (d[1] as string).repeat(d[2] as number);
    case "bin_repeat": {
      const unit = fromHex(d[1] as string);
      const out = new Uint8Array(unit.length * (d[2] as number));
      for (let i = 0; i < out.length; i += unit.length) out.set(unit, i);
      return out;
    }
    case "array_repeat":
      return Array.from({ length: d[2] as number }, () => buildValue(d[1] as Json[]));
    case "nest": {
      let v = buildValue(d[1] as Json[]);
      for (let i = 0; i < (d[2] as number); i++) v = [v];
      return v;
    }
    default:
      throw new Error(`unknown value tag ${tag}`);
  }
}

/** A byte descriptor: hex, or {"parts": [["hex", h] | ["repeat", hex, count], ...]}. */
export function buildBytes(d: Json): Uint8Array {
  if (typeof d === "string") return fromHex(d);
  const parts: Uint8Array[] = [];
  for (const [kind, hex, count] of d.parts as Json[][]) {
    const unit = fromHex(hex as string);
    if (kind === "hex") parts.push(unit);
    else {
      const out = new Uint8Array(unit.length * (count as number));
      for (let i = 0; i < out.length; i += unit.length) out.set(unit, i);
      parts.push(out);
    }
  }
  return concatBytes(...parts);
}

export { utf8 };
