/**
 * Fatal TLS alert records, sent in answer to a ClientHello the server will not serve: the
 * client sees a TLS error naming the reason, never a plaintext page inside a TLS connection.
 * Record: type 21 (alert), version 3.1, length 2, level 2 (fatal), description.
 */
function alert(description: number): Buffer {
  return Buffer.from([21, 3, 1, 0, 2, 2, description]);
}

export const TLS_ALERT = {
  /** 112: no route for the requested server name. */
  unrecognizedName: alert(112),
  /** 80: the route exists but its agent could not reach the target. */
  internalError: alert(80),
  /** 40: handshake refused (not a usable ClientHello). */
  handshakeFailure: alert(40),
} as const;
