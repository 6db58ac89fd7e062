// Which React the tests ran on (REACT=18: React 18, through vitest.config.ts's aliases).
import { version } from 'react';
import { version as domVersion } from 'react-dom';
import { expect, it } from 'vitest';

it(`runs on React ${process.env.REACT === '18' ? 18 : 19}`, () => {
  const major = process.env.REACT === '18' ? '18.' : '19.';
  expect(version.startsWith(major)).toBe(true);
  expect(domVersion.startsWith(major)).toBe(true);
});
