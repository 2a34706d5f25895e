#!/bin/sh
# vagrant-agent.sh: provisions one Vagrant VM (see the Vagrantfile): lvm2,
# the volume group on the VM's extra disk (provision-vg.sh, shared with the
# qemu guest), the forknode binary from the synced folder and a systemd
# unit running `forknode agent` with the lvm backend.
#
# Environment: FORKNODE_NAME, FORKNODE_IP, FORKNODE_REGION, FORKNODE_JOIN
# (comma-separated gossip addresses), FORKNODE_VG, FORKNODE_THIN_POOL
# (empty: thick).
set -eu
: "${FORKNODE_NAME:?}" "${FORKNODE_IP:?}" "${FORKNODE_REGION:?}" "${FORKNODE_JOIN:?}" "${FORKNODE_VG:?}"
pool=${FORKNODE_THIN_POOL:-}
src=/vagrant

export DEBIAN_FRONTEND=noninteractive
if ! command -v lvm >/dev/null || ! command -v thin_check >/dev/null; then
	apt-get update -qq
	apt-get install -y -qq lvm2 thin-provisioning-tools
fi

# The extra disk: the first whole disk with no partitions, no filesystem
# and nothing mounted.
disk=""
for d in /dev/sd? /dev/vd?; do
	[ -b "$d" ] || continue
	if lsblk -n -o NAME "$d" | tail -n +2 | grep -q .; then continue; fi # has partitions
	if [ -n "$(lsblk -n -o FSTYPE,MOUNTPOINT "$d" | tr -d ' \n')" ] && ! lvm pvs "$d" >/dev/null 2>&1; then continue; fi
	disk=$d
	break
done
[ -n "$disk" ] || { echo "vagrant-agent: no free extra disk found" >&2; lsblk >&2; exit 1; }
echo "vagrant-agent: using $disk for volume group $FORKNODE_VG"
if [ -n "$pool" ]; then
	sh "$src/test/e2e/qemu/provision-vg.sh" "$disk" "$FORKNODE_VG" "$pool" 80%FREE
else
	sh "$src/test/e2e/qemu/provision-vg.sh" "$disk" "$FORKNODE_VG"
fi

install -m 0755 "$src/bin/forknode" /usr/local/bin/forknode
install -d -m 0700 /etc/forknode /var/lib/forknode
install -m 0600 "$src/test/e2e/.cache/vagrant/cluster.key" /etc/forknode/cluster.key
forknode token --key /etc/forknode/cluster.key >/etc/forknode/token 2>/dev/null || true

pool_flag=""
[ -n "$pool" ] && pool_flag="--thin-pool $pool"
# Pacing times commit-like writes on the VG's disk: the agent makes an LV
# of its own for that (forknode-ioprobe, untagged, so not a volume).
cat >/etc/systemd/system/forknode.service <<UNIT
[Unit]
Description=forknode agent
After=network-online.target lvm2-monitor.service
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/forknode agent --name $FORKNODE_NAME --data-dir /var/lib/forknode \\
  --gossip-addr $FORKNODE_IP:7946 --cluster-addr $FORKNODE_IP:7947 --api-addr 0.0.0.0:7948 --api-tls \\
  --join $FORKNODE_JOIN --bootstrap-expect 3 --region $FORKNODE_REGION \\
  --backend lvm --vg $FORKNODE_VG $pool_flag \\
  --key /etc/forknode/cluster.key
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now forknode.service
systemctl --no-pager status forknode.service || true
