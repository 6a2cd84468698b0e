export * from './errors.js';
export * from './constants.js';
export { encodeHeader, decodeHeader, describeHeader, type FrameHeader } from './frame.js';
export { FrameDecoder, type FrameSink } from './decoder.js';
export {
  YamuxSession,
  systemClock,
  resolveSessionOptions,
  DEFAULT_SESSION_OPTIONS,
  MAX_UNSENT_REPLIES,
  type Clock,
  type SessionOptions,
  type ResolvedSessionOptions,
  type ReadLimit,
  type SessionStats,
} from './session.js';
export { YamuxStream } from './stream.js';
export { createWebSocketDuplex, type WebSocketDuplexOptions } from './ws-duplex.js';
export {
  WEBSOCKET_VERSION,
  createWebSocketKey,
  webSocketAccept,
  upgradeRequestHeaders,
  checkUpgradeRequest,
  upgradeResponseHead,
  checkUpgradeResponse,
} from './ws-handshake.js';
export * from './config-schema.js';
export * from './route-name.js';
export * from './control.js';
export * from './stream-header.js';
export * from './logger.js';
export * from './splice.js';
