#!/usr/bin/env bash
# The real node's mount namespace: node-up.sh starts containerd as
#   unshare --mount --propagation private -- node-ns.sh NODE_STATE containerd ...
# and kubelet later joins the same namespace (nsenter --mount=/proc/<containerd>/ns/mnt). Inside
# it, before exec'ing the command, this script bind-mounts:
#
# - the kernel tunables kubelet insists on (pkg/kubelet/cm/container_manager_linux.go,
#   setupKernelTunables: vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1, ...).
#   kubelet either rewrites them host-wide (protectKernelDefaults: false) or refuses to start
#   (true); on a shared machine neither is acceptable (panic_on_oops=1 would turn any kernel
#   oops into a reboot of everyone's work). A file with the value kubelet expects, mounted over
#   /proc/sys/<name> in this namespace only, makes it read what it wants and write nothing. The
#   pods see the real values (runc mounts a fresh /proc for them).
# - folders the runtime otherwise shares host-wide (/run/containerd: runc's state and the shims'
#   sockets; /var/run/netns: the pods' network namespaces; /var/lib/cni: libcni's cache;
#   /var/log/containers: kubelet's log symlinks), so nothing of this node is left on the host
#   and two nodes (two clusters) never see each other's. They live under NODE_STATE.
#
# Mounts made in this namespace (pod volumes, overlay rootfs, netns pins) vanish with its last
# process: node-down.sh leaves nothing mounted on the host.
set -euo pipefail
node_state="$1"
shift

for file in "${node_state}"/sysctl/*; do
  [[ -e "${file}" ]] || continue
  name="$(basename "${file}")"
  mount --bind "${file}" "/proc/sys/${name//.//}"
done

private_dir() { # private_dir HOST_PATH STATE_SUBDIR
  mkdir -p "$1" "${node_state}/$2"
  mount --bind "${node_state}/$2" "$1"
}
private_dir /run/containerd run-containerd
private_dir /var/run/netns netns
private_dir /var/lib/cni cni-lib
private_dir /var/log/containers log-containers

exec "$@"
