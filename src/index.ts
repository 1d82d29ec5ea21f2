// Draftwire's public API: what an embedder (a producer of samples, a consumer of leases, a tool
// reading a job's ledger) imports. Everything not re-exported here is internal and may change.
// Built to dist/src/index.js (+ .d.ts) by `npm run build:ts`; `import ... from 'draftwire'`.

// Errors: one class per failure, each with a stable `code` and `retryable`.
export {
  DraftwireError, InvalidArgumentError, DecodeError, AuthError, SampleGoneError, StaleGenerationError,
  StaleEpochError, LeaseExpiredError, BackpressureError, ChecksumError, TimeoutError, NativeError,
  CollectiveError, StoreWriteError, ConflictError, UnavailableError, ActorStoppedError, SchemaError,
  WalCorruptError, InputClosedError, ModelFormatError, DatasetRowError, ChatTemplateError, FeaturesError, type DraftwireErrorOptions,
} from './errors.ts';

// The wire: the SampleRef codec, message framing limits, authentication.
export {
  encodeSampleRef, decodeSampleRef, validateSampleRef, parseSampleUri, dirUri, httpUri,
  SAMPLE_DTYPES, SAMPLE_REF_MAX_BYTES,
  type SampleRef, type SampleDtype, type FeatureSpec, type Producer, type ParsedUri,
} from './wire/sampleref.ts';
export { sampleSchema, checkSampleRef, checkFeatures, FEATURE_NAMES, FLOAT_FEATURE_DTYPES, type SampleSchema, type FeatureName, type FeatureRule } from './wire/schema.ts';
export { AuthPolicy, MIN_SECRET_BYTES, type AuthOptions } from './wire/auth.ts';
export { errorToWire, errorFromWire, type WireError } from './wire/error-codec.ts';
export { subjects, type JobSubjects } from './wire/subjects.ts';
// The protocol, declared once (every subject, its message and reply types, key rule, timeout),
// and the typed clients over the Bus that own those keys, timeouts and retries.
export {
  PROTOCOL, STORAGE, subjectOf, jobPrefix, parseEpochInfo, parseHeartbeat,
  type Endpoint, type EndpointName, type RequestName, type ReqOf, type RepOf, type Kind, type EpochInfo,
  type CommitRequest, type CommitReply, type CreditRequest, type CreditReply, type LeaseRequest, type LeaseReply, type RenewReply,
  type FailRequest, type RevokeRequest, type RevokeReply, type QueueStatus, type CommittedReply, type ScaleRequest, type ScaleReply,
  type RegroupRequest, type RegroupReply, type CoordStatus, type JanitorStatus, type SpawnRequest, type SpawnReply, type StopRequest,
  type StopReply, type LeaseMessage, type StoreFree, type DeadRank, type Heartbeat, type RankHeartbeat, type NodeHeartbeat,
  type StepMetrics, type RankDone,
} from './wire/protocol.ts';
export { QueueClient, CoordinatorClient, JanitorClient, NodeClient, HeartbeatPublisher, publish, call, serve, announce, listen, type CallOptions } from './bus/clients.ts';

// The NATS boundary.
export { Bus } from './bus/bus.ts';
export type { BusConnectOptions, RequestOptions, SubscribeOptions, BusSubscription, MsgMeta } from './bus/core.ts';

// The feature store.
export { SharedDirFeatureStore, type SharedDirOptions } from './store/shared-dir.ts';
export { HttpFeatureStore, type HttpStoreOptions } from './store/http-store.ts';
export { StoreHttpServer, type StoreServerOptions } from './store/http-server.ts';
export type { FeatureStore, PutOptions, GetOptions, GcStats, StoreHealth } from './store/feature-store.ts';
export { tensor, type Tensor, type Dtype } from './tensor.ts';

// The lease ledger, its partition function and its audit.
export { dpPartition, jumpHash, MAX_PARTITIONS } from './ledger/partition.ts';
export { LeaseLedger, auditEvents, type AuditReport, type Lease, type LedgerEvent, type LedgerOptions } from './ledger/ledger.ts';

// Chat data for draft training: the model's tokenizer and chat template, loss masks of the
// assistant turns, JSONL chat datasets, and the draft vocabulary (SpecForge's d2t/t2d file).
export { loadTokenizer, type ChatTokenizer } from './chat/tokenizer.ts';
export { renderChat, renderPrompt, type ChatMessage, type Role, type RenderOptions } from './chat/template.ts';
export { maskConversation, type MaskedConversation, type MaskOptions } from './chat/mask.ts';
export {
  readChatDataset, prepareChatDataset, sanitizeId,
  type ChatRow, type ReadOptions as ChatReadOptions, type PreparedRow, type HeldRow, type PrepareSummary, type PrepareOptions,
} from './chat/dataset.ts';
export { countSupervisedTokens, buildDraftVocab, writeVocabFile, readVocabFile, type DraftVocab } from './chat/vocab.ts';
