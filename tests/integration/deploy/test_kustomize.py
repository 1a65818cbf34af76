"""Each deploy/k8s entry point rendered by kustomize (kubectl's built-in), and what it renders
validated against the Kubernetes schemas: the namespace transform and the directory
references are kustomize's to resolve, so this checks them where the unit tier cannot.
Skips where no kubectl is installed."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.support import deploy_files as d

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


@pytest.mark.parametrize("entry", d.ENTRY_POINTS, ids=lambda p: p.name)
def test_entry_point_renders_to_valid_objects_in_the_shunter_namespace(entry):
    result = subprocess.run([KUBECTL, "kustomize", str(entry)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert len(rendered) == len(d.objects(entry))
    for obj in rendered:
        if obj["kind"] == "Namespace":
            continue
        assert obj["metadata"]["namespace"] == "shunter", obj["metadata"]["name"]
        if obj["kind"] not in d.CRD_KINDS:
            kubernetes_validate.validate(obj, d.K8S_VERSIONS[0], strict=True)
