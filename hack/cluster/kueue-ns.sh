#!/usr/bin/env bash
# Kueue's mount namespace: kueue-up.sh starts Kueue as
#   unshare --mount --propagation private -- kueue-ns.sh KUEUE_STATE kueue ...
# and this script, inside that namespace, makes /etc/kueue/metrics/certs/tls.{crt,key} exist
# before exec'ing the command (so the PID kueue-up.sh records is Kueue's own).
#
# Why: with internalCertManagement off (its certificates come from the cluster's CA instead of
# Secrets it would write and webhook configurations it would patch, for a Deployment that does
# not exist here), Kueue v0.17 always loads its metrics server's certificate from that fixed
# path and exits without it (cmd/kueue/main.go: no flag or config field moves it). The host's
# /etc is not ours to write, and two clusters would each want their own files there. Here an
# overlay over /etc adds kueue/metrics/certs and reads every other file through from the host's.
# Its upper and work dirs are on a tmpfs of this namespace: overlayfs refuses an upper dir on
# some filesystems (overlayfs itself, as a container's /tmp may be). Every mount vanishes with
# the process: nothing is left on the host.
set -euo pipefail
kueue_state="$1"
shift

ovl="${kueue_state}/etc-overlay"
mkdir -p "${ovl}"
mount -t tmpfs -o mode=0700,size=1m tmpfs "${ovl}"
mkdir -p "${ovl}/upper/kueue/metrics/certs" "${ovl}/work"
cp "${kueue_state}/certs/tls.crt" "${kueue_state}/certs/tls.key" "${ovl}/upper/kueue/metrics/certs/"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=${ovl}/upper,workdir=${ovl}/work" /etc

exec "$@"
