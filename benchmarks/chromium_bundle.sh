#!/usr/bin/env bash
# Debian's chromium + chromium-driver as a relocatable bundle for the GPU machine, whose image has no browser and
# takes no packages from outside: the demo page's latency through a real browser on the GPU (#38,
# `benchmarks/demo_latency.py --ways page`). The bundle holds /usr/lib/chromium and every shared library its binaries
# load, less glibc's own (the host's glibc must be at least this machine's), with bin/chromium and bin/chromedriver
# wrappers that point LD_LIBRARY_PATH at it, and three DejaVu fonts with a fontconfig file of its own (the GPU image
# has no fonts: there the demo page's renderer crashed, "Unable to receive message from renderer", 2026-12-04; the
# same crash here with fontconfig pointed at an empty font folder). It is written as one tar.xz (python's tarfile
# unpacks it: no zstd needed there) split in parts of 45 MiB, one per device call (a call carries 64 MiB), under
# OUT/p1, OUT/p2, ... with OUT/SHA256.
#
#   benchmarks/chromium_bundle.sh [OUT=.chromium]      # needs chromium, chromium-driver, fonts-dejavu-core
#
# On the device: cat p*/part* > b.tar.xz; python -c "import tarfile; tarfile.open('b.tar.xz').extractall('/tmp',
# filter='tar')"; export PATH=/tmp/chromium-bundle/bin:$PATH (shutil.which then finds the bundle's wrappers). Each
# part travels in a call of its own (carry [".chromium/pN"]), copied out under a temporary name and then renamed, so
# that a job waiting for the last part never reads half of it.
set -euo pipefail
OUT=$(realpath -m "${1:-.chromium}")
LIB=/usr/lib/chromium
[ -x "$LIB/chromium" ] && [ -x "$LIB/chromedriver" ] || { echo "error: $LIB/chromium or chromedriver missing:" \
  "apt-get install chromium chromium-driver" >&2; exit 1; }
FONTS=/usr/share/fonts/truetype/dejavu
for f in DejaVuSans.ttf DejaVuSans-Bold.ttf DejaVuSansMono.ttf; do
  [ -f "$FONTS/$f" ] || { echo "error: $FONTS/$f missing: apt-get install fonts-dejavu-core" >&2; exit 1; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
B=$WORK/chromium-bundle
mkdir -p "$B/lib" "$B/bin" "$B/fonts"
cp -a "$LIB" "$B/lib/"
cp "$FONTS"/DejaVuSans.ttf "$FONTS"/DejaVuSans-Bold.ttf "$FONTS"/DejaVuSansMono.ttf "$B/fonts/"
# the bundle's fonts only, found beside this file (prefix="relative"), whatever the host has: the page renders the
# same on every machine
cat > "$B/fonts/fonts.conf" <<'EOF'
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <dir prefix="relative">.</dir>
  <cachedir prefix="xdg">fontconfig</cachedir>
</fontconfig>
EOF
# what the page does not need: Vulkan's validation layers and mock driver, every UI language but en-US
rm -f "$B"/lib/chromium/libVkLayer_khronos_validation.so* "$B"/lib/chromium/libVkICD_mock_icd.so*
find "$B/lib/chromium/locales" -type f ! -name 'en-US*' -delete
for f in chromium chromedriver chrome_crashpad_handler libEGL.so libGLESv2.so libvk_swiftshader.so; do
  [ -e "$LIB/$f" ] && ldd "$LIB/$f"
done | awk '/=>/ {print $3}' | sort -u \
  | grep -v -E '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux-x86-64)\.so' \
  | xargs -r -I{} cp -L {} "$B/lib/"
for exe in chromium chromedriver; do
  cat > "$B/bin/$exe" <<EOF
#!/bin/sh
# $(chromium --version 2>/dev/null | head -1) with its libraries; glibc from the host ($(ldd --version | head -1))
D=\$(cd "\$(dirname "\$0")/.." && pwd)
export LD_LIBRARY_PATH="\$D/lib:\$D/lib/chromium\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export FONTCONFIG_FILE="\$D/fonts/fonts.conf"
exec "\$D/lib/chromium/$exe" "\$@"
EOF
  chmod +x "$B/bin/$exe"
done
"$B/bin/chromium" --headless=new --no-sandbox --disable-gpu --dump-dom 'data:text/html,<p>ok</p>' 2>/dev/null \
  | grep -q '<p>ok</p>' || { echo "error: the bundle's chromium does not render a page here" >&2; exit 1; }
tar -C "$WORK" -cf - chromium-bundle | xz -T0 -8 > "$WORK/b.tar.xz"
mkdir -p "$OUT" && rm -rf "$OUT"/p[0-9]* "$OUT/SHA256"
(cd "$WORK" && split -b 45M -d -a 1 b.tar.xz part && sha256sum b.tar.xz > "$OUT/SHA256")
i=1
for p in "$WORK"/part*; do mkdir -p "$OUT/p$i" && mv "$p" "$OUT/p$i/"; i=$((i + 1)); done
echo "$OUT: $(du -sh "$WORK/b.tar.xz" | cut -f1) in $((i - 1)) parts ($(cut -c1-16 "$OUT/SHA256")...)"
