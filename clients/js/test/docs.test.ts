/**
 * docs/client.md's TypeScript example, run: it must print the figures the doc shows, which
 * tests/docs/test_client_languages.py holds to the shared vectors (and the Python example to).
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const DOC = fileURLToPath(new URL("../../../../docs/client.md", import.meta.url));
const INDEX = fileURLToPath(new URL("../src/index.js", import.meta.url));
const TITLE = "## One transaction in Python and in TypeScript";

function block(section: string, language: string): string {
  const match = new RegExp("^```" + language + "\\n([\\s\\S]*?)^```$", "m").exec(section);
  assert.ok(match, `no \`\`\`${language} block in ${TITLE}`);
  return match[1]!;
}

describe("docs/client.md", () => {
  it("its TypeScript example prints the figures it shows", () => {
    const text = readFileSync(DOC, "utf-8");
    assert.ok(text.includes(TITLE));
    const section = text.split(TITLE)[1]!.split("\n## ")[0]!;
    // The example is plain JavaScript as well as TypeScript: it runs as a module, importing
    // this build in place of the published package name.
    const code = block(section, "ts").replace('"@consortium/client"', JSON.stringify(INDEX));
    assert.notEqual(code, block(section, "ts"), "the example imports @consortium/client");
    const dir = mkdtempSync(join(tmpdir(), "consortium-docs-"));
    try {
      const file = join(dir, "example.mjs");
      writeFileSync(file, code);
      const out = execFileSync(process.execPath, [file], { encoding: "utf-8" });
      assert.deepEqual(out.trim().split("\n"), block(section, "text").trim().split("\n"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
