/**
 * Consortium's TypeScript client.
 *
 * - Build and sign transactions byte for byte as the Python client (`createTransaction`).
 * - Submit them through the members' HTTP/JSON gateways, trusting none, and wait for f+1
 *   verified receipts from distinct members (`GatewayClient`).
 * - Keep and check receipt documents offline against the genesis file (`verifyReceiptDocument`).
 *
 * Every check decides exactly as the node does: tests/vectors/shared.json, written from the
 * Python code, holds the cases both implementations are tested against.
 */

export { toHex, fromHex, toBase64, fromBase64, toBase64Url, equalBytes, concatBytes, utf8 } from "./bytes.js";
export {
  pack,
  unpack,
  unpackCanonical,
  WireFormatError,
  MsgMap,
  MsgExt,
  MsgFloat,
  type MsgValue,
  MAX_ARRAY,
  MAX_BIN,
  MAX_STR,
  MAX_DEPTH,
} from "./codec.js";
export { sha256, sha256Concat, digestOf } from "./hash.js";
export {
  Domain,
  type DomainName,
  type KeyPair,
  signedMessage,
  verify,
  verifyMessage,
  sign,
  keyPairFromSeed,
  generateKeyPair,
  isValidPublicKey,
  isCanonicalEncoding,
  hasSmallOrder,
} from "./ed25519.js";
export { leafHash, nodeHash, merkleRoot, inclusionProof, verifyInclusion, EMPTY_ROOT } from "./merkle.js";
export {
  createTransaction,
  encodeTransaction,
  randomNonce,
  opToArray,
  put,
  del,
  cas,
  get,
  type Op,
  type Transaction,
} from "./transaction.js";
export {
  Genesis,
  GenesisError,
  parseGenesis,
  loadGenesis,
  type Member,
  type Client,
  type Mode,
  type Params,
} from "./genesis.js";
export {
  type BlockHeader,
  type Receipt,
  type SignedVote,
  headerHash,
  encodeHeader,
  encodeReceipt,
  blockSignatureBody,
} from "./ledger.js";
export {
  type Bundle,
  decodeBundle,
  encodeBundle,
  verifyBundle,
  inclusionProblem,
  verifyHeaderSignature,
  voteSigner,
} from "./bundle.js";
export {
  type ReceiptProof,
  type DocumentVerdict,
  ReceiptFormatError,
  FORMAT as RECEIPT_FORMAT,
  signaturesNeeded,
  fromBundles,
  toDocument,
  dumps,
  loads,
  verifyReceipt,
  verifyReceiptDocument,
  verifyBlockSignatures,
} from "./receipts.js";
export {
  GatewayClient,
  GatewayConfigError,
  parseGatewaysFile,
  isFinalRejection,
  bundleFromBase64,
  ANSWER_BYTES_MAX,
  type GatewayTlsOptions,
  type GatewayEntry,
  type GatewaysFile,
  type GatewayClientOptions,
  type SubmitOptions,
  type TxOutcome,
} from "./gateway.js";
export { loadKeyFile, KeyFileError } from "./keyfile.js";
