"""Handles the real-node fixtures (conftest.py) give the tests: the node, the bucket, the release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import Cluster


@dataclass(frozen=True)
class RealNode:
    """The real node of the local cluster and the images loaded into it."""

    name: str
    ip: str
    label: str
    images: dict[str, str]
    cluster: Cluster

    @property
    def placement(self) -> dict[str, Any]:
        """nodeSelector + tolerations that put a pod on this node (and only there)."""
        return {
            "nodeSelector": {self.label: "true"},
            "tolerations": [
                {"key": self.label, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
        }

    def log(self, component: str, tail: int = 60) -> str:
        return self.cluster.logs(component, tail)


@dataclass(frozen=True)
class Bucket:
    """The GCS emulator's bucket, as the pods (``endpoint``) and the test process see it."""

    endpoint: str
    name: str

    @property
    def url(self) -> str:
        return f"gs://{self.name}"

    @property
    def pod_env(self) -> dict[str, str]:
        # gcsfs asks for the bucket type over gRPC first unless told not to, and stalls ~60 s
        # against a plain-HTTP emulator (docs/local-cluster.md).
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    deployment: str
    values: dict[str, Any]


@dataclass(frozen=True)
class ArgoServer:
    """argo-server on the cluster (argo-server-up.sh) and the argo CLI built with it."""

    url: str
    cli: Path
