#!/usr/bin/env bash
# Downloads the CC-BY-4.0 IP-to-ASN data set published on npm as
# @ip-location-db/asn (RouteViews + the five RIRs via NRO + DB-IP ASN Lite,
# merged by ip-location-db) and installs its IPv4 and IPv6 CSV files, with
# their licence files, into a directory firstseen can load.
#
# Usage:   scripts/fetch-asn-db.sh [TARGET_DIR] [VERSION]
#          TARGET_DIR defaults to data/asn (gitignored), VERSION to latest.
# Needs:   npm (only to talk to the npm registry), tar.
# Then:    firstseen normalize --asn-db data/asn ...   (or replay / run)
#
# Attribution: the data is licensed CC BY 4.0 by RouteViews, NRO and DB-IP;
# keep the *LICENSE files next to the CSVs and credit them wherever you
# show or redistribute lookup results (see samples/asn/ATTRIBUTION.md).
set -euo pipefail

target="${1:-data/asn}"
version="${2:-latest}"

command -v npm >/dev/null || { echo "fetch-asn-db: npm is required (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch-asn-db: downloading @ip-location-db/asn@$version from the npm registry" >&2
tarball="$(cd "$work" && npm pack --silent "@ip-location-db/asn@$version" | tail -n 1)"
tar -xzf "$work/$tarball" -C "$work"
pkg="$work/package"
for f in asn-ipv4.csv asn-ipv6.csv; do
  [ -s "$pkg/$f" ] || { echo "fetch-asn-db: $f missing from $tarball" >&2; exit 1; }
done

mkdir -p "$target"
# Replace each file atomically (write next to it, then rename) so a running
# firstseen that watches the directory never reads a half-written file.
for f in asn-ipv4.csv asn-ipv6.csv; do
  cp "$pkg/$f" "$target/.$f.tmp"
  mv -f "$target/.$f.tmp" "$target/$f"
done
for f in "$pkg"/*LICENSE* "$pkg"/MODIFICATIONS "$pkg"/package.json; do
  [ -e "$f" ] && cp "$f" "$target/"
done

installed="$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$target/package.json")"
echo "fetch-asn-db: installed @ip-location-db/asn $installed:" >&2
wc -l "$target/asn-ipv4.csv" "$target/asn-ipv6.csv" >&2
echo "fetch-asn-db: pass this to firstseen:" >&2
echo "--asn-db $target"
