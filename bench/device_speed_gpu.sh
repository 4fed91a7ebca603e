#!/usr/bin/env bash
# The wgpu-against-flex measurement on a lent GPU machine (benches/device_speed.rs), in two halves:
#
#   bench/device_speed_gpu.sh prepare   # here: build the bench, carry it stripped and gzipped in
#                                       # .gpu/, and the Vulkan loaders in .gl/ (both git-ignored)
#   bench/device_speed_gpu.sh run       # there, as the device tool's command with carry [".gl", ".gpu"]:
#                                       # installs the loaders, runs the bench, table into $OUT
#
# The device machine has no Rust toolchain and ../shared does not travel, so the bench runs on
# the built-in synthetic data. Paste the table into BENCHMARKS.md by hand (the bench's own
# writer points at this checkout's path, which the device machine does not have).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    target=${CARGO_TARGET_DIR:-target}
    cargo bench --bench device_speed --no-run
    bin=$(ls -t "$target"/release/deps/device_speed-* | grep -v '\.d$' | head -1)
    mkdir -p .gpu .gl /tmp/amd64/partial
    grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
    grep -qx '/.gl/' .git/info/exclude || echo /.gl/ >> .git/info/exclude
    strip -o .gpu/device_speed "$bin"
    gzip -f .gpu/device_speed
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update >/dev/null
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    ls -la .gpu .gl
    ;;
run)
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    gunzip -c .gpu/device_speed.gz > /tmp/device_speed
    chmod +x /tmp/device_speed
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    /tmp/device_speed --steps "${STEPS:-60}" --shoppers "${SHOPPERS:-2048}" --no-write | tee "${OUT:-/tmp}/device_speed.md"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
