"""JSON Schemas, written from the projects' documentation, for the objects Kubernetes' own
schemas do not cover: KEDA's ScaledObject with its prometheus trigger (keda.sh docs 2.18,
"ScaledObject specification" and "Scalers / Prometheus") and the Prometheus Adapter's rule
file (kubernetes-sigs/prometheus-adapter docs/config.md). Strict: a field the documentation
does not define is an error, as a typo would be silently ignored by the controller.
"""

from __future__ import annotations

from typing import Any

_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string", "minLength": 1}
#: KEDA's trigger metadata is a map of strings; numbers must be quoted.
_NUMBER_STRING = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
_BOOL_STRING = {"type": "string", "enum": ["true", "false"]}

_HPA_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "value", "periodSeconds"],
    "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT},
}
_HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": _INT,
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": _HPA_POLICY},
        "tolerance": {"type": ["string", "number"]},
    },
}

PROMETHEUS_TRIGGER_METADATA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["serverAddress", "query", "threshold"],
    "properties": {
        "serverAddress": {"type": "string", "pattern": "^https?://"},
        "query": _STR,
        "threshold": _NUMBER_STRING,
        "activationThreshold": _NUMBER_STRING,
        "namespace": _STR,
        "customHeaders": _STR,
        "ignoreNullValues": _BOOL_STRING,
        "queryParameters": _STR,
        "unsafeSsl": _BOOL_STRING,
        "timeout": _NUMBER_STRING,
        "authModes": _STR,
    },
}

SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _STR, "namespace": _STR, "labels": {"type": "object"}, "annotations": {"type": "object"},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR, "envSourceContainerName": _STR},
                },
                "pollingInterval": _INT,
                "cooldownPeriod": _INT,
                "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT,
                "minReplicaCount": _INT,
                "maxReplicaCount": _INT,
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": _INT,
                        "replicas": _INT,
                        "behavior": {
                            "enum": ["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _STR,
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                },
                            },
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["target", "formula"],
                            "properties": {
                                "target": _STR,
                                "activationTarget": _STR,
                                "metricType": {"enum": ["AverageValue", "Value"]},
                                "formula": _STR,
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": _STR,
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "name": _STR,
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": _STR,
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                        },
                        "if": {"properties": {"type": {"const": "prometheus"}}},
                        "then": {"properties": {"metadata": PROMETHEUS_TRIGGER_METADATA}},
                    },
                },
            },
        },
    },
}

_GROUP_RESOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resource"],
    "properties": {"group": {"type": "string"}, "resource": _STR},
}
_ADAPTER_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["seriesQuery", "metricsQuery"],
    "properties": {
        "seriesQuery": _STR,
        "seriesFilters": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {"is": _STR, "isNot": _STR},
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "template": _STR,
                "overrides": {"type": "object", "additionalProperties": _GROUP_RESOURCE},
            },
        },
        "name": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"matches": _STR, "as": {"type": "string"}},
        },
        # The template must use the adapter's three fields, or it cannot select per object.
        "metricsQuery": {"type": "string", "allOf": [
            {"pattern": r"<<\.Series>>"}, {"pattern": r"<<\.LabelMatchers>>"}, {"pattern": r"<<\.GroupBy>>"},
        ]},
    },
}

ADAPTER_CONFIG: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "rules": {"type": "array", "items": _ADAPTER_RULE},
        "externalRules": {"type": "array", "items": _ADAPTER_RULE},
        "resourceRules": {"type": "object"},
    },
}
