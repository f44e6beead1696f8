#!/usr/bin/env node
// In the published package (dist/, no src/) run the built CLI; in a source checkout run the
// TypeScript directly via tsx, so a stale dist/ never shadows the sources.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const built = join(root, 'dist', 'cli.js');
if (existsSync(built) && !existsSync(join(root, 'src', 'cli', 'main.ts'))) {
  const { main } = await import(pathToFileURL(built).href);
  await main(process.argv.slice(2));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import(pathToFileURL(join(root, 'src', 'cli', 'main.ts')).href);
  await main(process.argv.slice(2));
}
