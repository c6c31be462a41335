{{/* The operator's rules: exactly what its handlers call, nothing more. */}}
{{- define "mlops.operatorRules" -}}
# Application: read MLOps objects; kopf patches them for its finalizer and progress annotations.
- apiGroups: [mlops.dev]
  resources: [mlops]
  verbs: [get, list, watch, patch]
# Application: the status (phase, conditions, run, metrics) is written only by the operator,
# whole and with optimistic concurrency (update with resourceVersion).
- apiGroups: [mlops.dev]
  resources: [mlops/status]
  verbs: [get, update]
# Application: children carry blockOwnerDeletion owner references, which clusters enforcing
# OwnerReferencesPermissionEnforcement allow only to those who may update the owner's finalizers.
- apiGroups: [mlops.dev]
  resources: [mlops/finalizers]
  verbs: [update]
# Application: one Workflow per run; stop (patch spec.shutdown) and prune old runs (delete).
- apiGroups: [argoproj.io]
  resources: [workflows]
  verbs: [get, list, watch, create, patch, delete]
# Application: one ConfigMap per run (the trainer's run file); pruned with its run. `get`: a name
# already taken is checked for its owner (never adopted when it is somebody else's).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, delete]
# Application: a deleted object waits until its trainer pods have ended (stopOnDelete): the
# Workflow is marked stopped at once, the trainer checkpoints a little later.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- if .Values.kueue.enabled }}
# Application (kueue.enabled): Kueue's Workload of each trainer pod says whether it is admitted,
# and why not yet (status Queued, WaitingForKueue).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch]
{{- end }}
# Framework (kopf): Kubernetes Events on the MLOps objects.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- if .Values.operator.provisionNamespaces }}
# Application (provisionNamespaces): what a run needs in its namespace, made on its first run
# there: the trainer ServiceAccount, and a Role + RoleBinding letting it report outputs as Argo's
# executor does. To grant those rules the operator must hold them itself (RBAC escalation check).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create]
- apiGroups: [argoproj.io]
  resources: [workflowtaskresults]
  verbs: [create, patch]
{{- else }}
# Application: a run namespace is checked for the trainer ServiceAccount.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
{{- end }}
{{- end -}}
