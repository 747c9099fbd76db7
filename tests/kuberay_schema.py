"""Validating a KubeRay RayJob without a cluster: the RayJob and RayCluster fields (names, types,
enumerations and required keys of KubeRay v1.7.0's ``ray.io/v1`` API, written out here), and every pod
template inside it (the head, each worker group, the submitter) checked as a Kubernetes ``v1
PodTemplate`` against the Kubernetes OpenAPI schemas that the kubernetes-validate package ships.

Unknown fields are refused at every level, as the API server's strict field validation (kubectl's
default) refuses them.

    errors = rayjob_errors(job)      # ["spec.rayClusterSpec...: 'x' was unexpected", ...]
"""

from __future__ import annotations

import jsonschema

KUBERNETES_VERSION = "1.33"
"""the Kubernetes version whose schemas check the pod templates (EKS and GKE ship it in 2026)"""

_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM = {"type": "number"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJ = {"type": "object"}          # a nested API object this file does not use: its fields are not checked
_POD = {"type": "object"}          # a PodTemplateSpec: checked by kubernetes-validate (below)

_HEAD = {
    "type": "object", "required": ["template"], "additionalProperties": False,
    "properties": {"enableIngress": _BOOL, "headService": _OBJ, "ingressOptions": _OBJ, "labels": _STRMAP,
                   "rayStartParams": _STRMAP, "resources": _STRMAP, "serviceType": _STR, "template": _POD},
}
_WORKER = {
    "type": "object", "required": ["groupName", "maxReplicas", "minReplicas", "template"], "additionalProperties": False,
    "properties": {"groupName": _STR, "idleTimeoutSeconds": _INT, "labels": _STRMAP, "maxReplicas": _INT,
                   "minReplicas": _INT, "numOfHosts": _INT, "priority": _INT, "rayStartParams": _STRMAP,
                   "replicas": _INT, "resources": _STRMAP, "scaleStrategy": _OBJ, "suspend": _BOOL,
                   "template": _POD},
}
_CLUSTER = {
    "type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
    "properties": {
        "authOptions": {"type": "object", "additionalProperties": False,
                        "properties": {"enableK8sTokenAuth": _BOOL, "mode": {"type": "string", "enum": ["disabled", "token"]},
                                       "secretName": _STR}},
        "autoscalerOptions": _OBJ, "enableInTreeAutoscaling": _BOOL, "gcsFaultToleranceOptions": _OBJ,
        "headGroupSpec": _HEAD, "headServiceAnnotations": _STRMAP, "historyServerOptions": _OBJ, "managedBy": _STR,
        "networkPolicy": _OBJ, "rayVersion": _STR, "suspend": _BOOL, "tlsOptions": _OBJ, "upgradeStrategy": _OBJ,
        "workerGroupSpecs": {"type": "array", "items": _WORKER},
    },
}
RAYJOB = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]}, "status": _OBJ,
        "spec": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": _INT, "backoffLimit": _INT, "clusterSelector": _STRMAP,
                "deletionStrategy": _OBJ, "entrypoint": _STR, "entrypointNumCpus": _NUM, "entrypointNumGpus": _NUM,
                "entrypointResources": _STR, "jobId": _STR, "managedBy": _STR, "metadata": _STRMAP,
                "preRunningDeadlineSeconds": _INT, "rayClusterSpec": _CLUSTER, "runtimeEnvYAML": _STR,
                "shutdownAfterJobFinishes": _BOOL,
                "submissionMode": {"type": "string", "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "submitterConfig": _OBJ, "submitterPodTemplate": _POD, "suspend": _BOOL,
                "ttlSecondsAfterFinished": _INT,
            },
        },
    },
}


def pod_templates(job: dict) -> list[tuple[str, dict]]:
    """``(where, PodTemplateSpec)`` of every pod template in a RayJob."""
    spec = job.get("spec", {})
    cluster = spec.get("rayClusterSpec", {})
    found = []
    if "template" in cluster.get("headGroupSpec", {}):
        found.append(("spec.rayClusterSpec.headGroupSpec.template", cluster["headGroupSpec"]["template"]))
    for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
        if "template" in group:
            found.append((f"spec.rayClusterSpec.workerGroupSpecs.{i}.template", group["template"]))
    if "submitterPodTemplate" in spec:
        found.append(("spec.submitterPodTemplate", spec["submitterPodTemplate"]))
    return found


def rayjob_errors(job: dict) -> list[str]:
    """Every problem of a RayJob: ``"dotted.path: message"`` (empty when it is valid)."""
    import kubernetes_validate

    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(RAYJOB).iter_errors(job)]
    for where, template in pod_templates(job):
        resource = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            inner = ".".join(map(str, list(exc.path)[1:]))            # drop the PodTemplate's own "template"
            errors.append(f"{where}{'.' + inner if inner else ''}: {exc.message}")
    return errors
