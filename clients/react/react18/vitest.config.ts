// The bindings' tests, on React 18: the sources and tests of .. import react and react-dom from here (the
// testing library, installed here, finds them here by itself).
import { fileURLToPath } from 'node:url';

import { defineConfig } from 'vitest/config';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  root: here('..'),
  esbuild: { jsx: 'automatic' },
  server: { fs: { allow: [here('..')] } },
  resolve: {
    alias: [
      { find: /^react$/, replacement: here('node_modules/react/index.js') },
      { find: /^react\/(.*)$/, replacement: here('node_modules/react/$1') },
      { find: /^react-dom$/, replacement: here('node_modules/react-dom/index.js') },
      { find: /^react-dom\/(.*)$/, replacement: here('node_modules/react-dom/$1') },
      { find: /^@testing-library\/react$/, replacement: here('node_modules/@testing-library/react/dist/index.js') },
    ],
  },
  test: {
    environment: 'jsdom',
    include: ['test/**/*.test.ts', 'test/**/*.test.tsx'],
    restoreMocks: true,
    env: { REACT: '18' },
  },
});
