{{/* The operator's rules: exactly what its handlers call, nothing more. */}}
{{- define "mlops.operatorRules" -}}
# Application: read MLOps objects; kopf patches them for its finalizer and progress annotations.
- apiGroups: [mlops.dev]
  resources: [mlops]
  verbs: [get, list, watch, patch]
# Application: the status (phase, conditions, run, metrics) is written only by the operator.
- apiGroups: [mlops.dev]
  resources: [mlops/status]
  verbs: [get, patch]
# Application: children carry blockOwnerDeletion owner references, which clusters enforcing
# OwnerReferencesPermissionEnforcement allow only to those who may update the owner's finalizers.
- apiGroups: [mlops.dev]
  resources: [mlops/finalizers]
  verbs: [update]
# Application: one Workflow per run; stop (patch spec.shutdown) and prune old runs (delete).
- apiGroups: [argoproj.io]
  resources: [workflows]
  verbs: [get, list, watch, create, patch, delete]
# Application: one ConfigMap per run (the trainer's run file); pruned with its run.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, delete]
# Framework (kopf): Kubernetes Events on the MLOps objects.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}
