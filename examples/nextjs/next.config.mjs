/** @type {import('next').NextConfig} */
const nextConfig = {
  reactStrictMode: true, // effects run twice in development: the provider still connects once
  eslint: { ignoreDuringBuilds: true },
  distDir: process.env.NEXT_DIST_DIR || '.next',
};

export default nextConfig;
