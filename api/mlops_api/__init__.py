"""The MLOps resource: typed spec and status, run ids and names, the CRD. Pure, no I/O."""

from mlops_api.errors import FieldError, ManifestError
from mlops_api.manifest import load_manifests, parse_manifest, read_manifest
from mlops_api.run import RunPlan, join_url, plan_run
from mlops_api.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION, MLOps, MLOpsSpec, MLOpsStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "FieldError",
    "MLOps",
    "MLOpsSpec",
    "MLOpsStatus",
    "ManifestError",
    "RunPlan",
    "join_url",
    "load_manifests",
    "parse_manifest",
    "plan_run",
    "read_manifest",
]
