// The build: TypeScript to dist/ (with declarations), then realtime.js itself (the server's browser client,
// realtime/web/realtime.js, which src/realtime.js links to) and its types beside it, as files.
import { execFileSync } from 'node:child_process';
import { copyFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
rmSync(here('dist'), { recursive: true, force: true });
execFileSync(process.execPath, [here('node_modules/typescript/bin/tsc'), '-p', here('tsconfig.json')], { stdio: 'inherit' });
copyFileSync(here('src/realtime.js'), here('dist/realtime.js')); // (follows the link)
copyFileSync(here('src/realtime.d.ts'), here('dist/realtime.d.ts'));
