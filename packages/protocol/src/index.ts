export * from './errors.js';
export { TokenBucket } from './token-bucket.js';
export * from './yamux/constants.js';
export { encodeHeader, decodeHeader, describeHeader, type FrameHeader } from './yamux/frame.js';
export { FrameDecoder, type FrameSink } from './yamux/decoder.js';
export {
  YamuxSession,
  systemClock,
  resolveSessionOptions,
  DEFAULT_SESSION_OPTIONS,
  MAX_UNSENT_REPLIES,
  LIVENESS_FLOOR_MS,
  LIVENESS_RTT_FACTOR,
  type Clock,
  type SessionOptions,
  type ResolvedSessionOptions,
  type ReadLimit,
  type SessionStats,
} from './yamux/session.js';
export { YamuxStream } from './yamux/stream.js';
export { createWebSocketDuplex, type WebSocketDuplexOptions } from './websocket/duplex.js';
export {
  WebSocketFrameDecoder,
  WsOpcode,
  WsCloseCode,
  type WebSocketFrameSink,
} from './websocket/frame-decoder.js';
export {
  WEBSOCKET_VERSION,
  createWebSocketKey,
  webSocketAccept,
  upgradeRequestHeaders,
  checkUpgradeRequest,
  upgradeResponseHead,
  checkUpgradeResponse,
} from './websocket/handshake.js';
export * from './tunnel/route-name.js';
export * from './tunnel/capabilities.js';
export * from './tunnel/control.js';
export * from './tunnel/stream-header.js';
export * from './tunnel/splice.js';
