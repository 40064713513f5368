"""The Python `kubernetes` client against a real kumo server: CRUD, selectors, custom objects and watch.

Usage: python3 test_client.py KUBECONFIG. Exits non-zero (with a traceback) on any failure; prints OK at the end.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    ns = "default"

    # CRUD on a built-in kind.
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"app": "py"}), data={"a": "1"})
    created = core.create_namespaced_config_map(ns, body)
    assert created.metadata.uid and created.metadata.resource_version
    got = core.read_namespaced_config_map("py", ns)
    assert got.data == {"a": "1"}, got.data
    patched = core.patch_namespaced_config_map("py", ns, {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}, patched.data
    got = core.read_namespaced_config_map("py", ns)
    got.data["a"] = "changed"
    replaced = core.replace_namespaced_config_map("py", ns, got)
    assert replaced.data["a"] == "changed"
    try:
        core.replace_namespaced_config_map("py", ns, got)  # stale resourceVersion
        raise AssertionError("stale update accepted")
    except ApiException as e:
        assert e.status == 409, e.status
    listed = core.list_namespaced_config_map(ns, label_selector="app=py")
    assert [c.metadata.name for c in listed.items] == ["py"]
    assert core.list_namespaced_config_map(ns, label_selector="app!=py").items == []
    try:
        core.read_namespaced_config_map("missing", ns)
        raise AssertionError("missing object found")
    except ApiException as e:
        assert e.status == 404

    # Paging with limit/continue.
    for i in range(5):
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i}", labels={"page": "yes"})))
    names, token = [], None
    while True:
        page = core.list_namespaced_config_map(ns, label_selector="page=yes", limit=2, _continue=token)
        names += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"page-{i}" for i in range(5)], names
    core.delete_collection_namespaced_config_map(ns, label_selector="page=yes")
    assert core.list_namespaced_config_map(ns, label_selector="page=yes").items == []

    # Watch: events arrive in order.
    events = []
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    w = watch.Watch()

    def consume():
        for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=20,
                           label_selector="watch=me"):
            events.append((ev["type"], ev["object"].metadata.name))
            if len(events) == 3:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.5)
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="wp", labels={"watch": "me"})))
    core.patch_namespaced_config_map("wp", ns, {"data": {"x": "y"}})
    core.delete_namespaced_config_map("wp", ns)
    t.join(30)
    assert events == [("ADDED", "wp"), ("MODIFIED", "wp"), ("DELETED", "wp")], events

    # Custom resources through CustomObjectsApi.
    ext = client.ApiextensionsV1Api()
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "size": {"type": "integer"}}}}}}}]},
    }
    ext.create_custom_resource_definition(crd)
    co = client.CustomObjectsApi()
    g = co.create_namespaced_custom_object("example.com", "v1", ns, "gadgets",
                                           {"apiVersion": "example.com/v1", "kind": "Gadget",
                                            "metadata": {"name": "g1"}, "spec": {"size": 3}})
    assert g["metadata"]["uid"]
    g = co.patch_namespaced_custom_object("example.com", "v1", ns, "gadgets", "g1", {"spec": {"size": 4}})
    assert g["spec"]["size"] == 4 and g["metadata"]["generation"] == 2, g
    items = co.list_namespaced_custom_object("example.com", "v1", ns, "gadgets")["items"]
    assert [i["metadata"]["name"] for i in items] == ["g1"]
    try:
        co.create_namespaced_custom_object("example.com", "v1", ns, "gadgets",
                                           {"apiVersion": "example.com/v1", "kind": "Gadget",
                                            "metadata": {"name": "g2"}, "spec": {"size": "big"}})
        raise AssertionError("schema violation accepted")
    except ApiException as e:
        assert e.status == 422 and "spec.size" in e.body, (e.status, e.body)
    co.delete_namespaced_custom_object("example.com", "v1", ns, "gadgets", "g1")
    core.delete_namespaced_config_map("py", ns)
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
