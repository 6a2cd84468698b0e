#!/usr/bin/env node
// The installed `tunnel-client` command: it loads the build. It exists before the build does, so
// npm links it at install time; `npm ci` then builds (the root package's `prepare` script).
import '../dist/bin.js';
