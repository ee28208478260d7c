#!/usr/bin/env bash
# Quick sequential throughput check on a local-folder vault (not the full
# comparison benchmark of issue 4): 512 MiB written with fsync, read back
# cold (fresh mount, empty cache) and warm (kernel page cache).
set -euo pipefail
W=$(mktemp -d /tmp/megafs-bench.XXXXXX)
trap 'megafs umount "$W/mnt" 2>/dev/null || fusermount3 -u -z "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
export MEGAFS_STATE_DIR=$W/state MEGAFS_PASSPHRASE=bench XDG_RUNTIME_DIR=$W/run
mkdir -p "$W/mnt" "$W/run"
megafs init "$W/store" >/dev/null 2>&1
megafs mount "$W/store" "$W/mnt" --cache-dir "$W/cache1"
echo -n "write 512 MiB + fsync: "
dd if=/dev/zero of="$W/mnt/big" bs=1M count=512 conv=fsync 2>&1 | tail -1 | sed 's/.*, //'
megafs umount "$W/mnt"
megafs mount "$W/store" "$W/mnt" --cache-dir "$W/cache2"
echo -n "cold read:             "
dd if="$W/mnt/big" of=/dev/null bs=1M 2>&1 | tail -1 | sed 's/.*, //'
echo -n "warm read:             "
dd if="$W/mnt/big" of=/dev/null bs=1M 2>&1 | tail -1 | sed 's/.*, //'
