/** @type {import('next').NextConfig} */
const nextConfig = {
  reactStrictMode: true, // effects run twice in development: the provider still connects once
  eslint: { ignoreDuringBuilds: true },
};

export default nextConfig;
