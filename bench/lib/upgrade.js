/**
 * The agent's side of the WebSocket opening handshake (packages/client/src/dialer.ts) for bench
 * load generators: sends `req` (an https.request carrying the upgrade headers for `key`) and
 * resolves with the upgraded socket and what came with the 101. `checkUpgradeResponse` comes
 * from the protocol build under test (bench/mux.js can load another one).
 */
export function sendUpgrade(req, key, checkUpgradeResponse) {
  return new Promise((resolve, reject) => {
    req.once('upgrade', (res, socket, head) => {
      socket.on('error', () => undefined);
      try {
        checkUpgradeResponse(res, key);
        resolve({ socket, head });
      } catch (err) {
        socket.destroy();
        reject(err);
      }
    });
    req.once('response', (res) => reject(new Error(`HTTP ${res.statusCode}`)));
    req.once('error', reject);
    req.end();
  });
}
