"""A loopback engine sees the files a ConfigMap volume would show it inside the pod."""

from kubetier.localdev.engines import configmap_mount_for


def _pod(items=None):
    cm = {"name": "llama-routing"}
    if items is not None:
        cm["items"] = items
    return {
        "spec": {
            "volumes": [{"name": "profile", "configMap": cm}, {"name": "scratch", "emptyDir": {}}],
            "containers": [
                {
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/tmp"},
                        {"name": "profile", "mountPath": "/etc/kubetier/profile/"},
                    ]
                }
            ],
        }
    }


def test_path_inside_a_configmap_mount_names_the_configmap_and_key():
    assert configmap_mount_for(_pod(), "/etc/kubetier/profile/profile.yaml") == ("llama-routing", "profile.yaml")


def test_items_map_a_file_name_back_to_its_key():
    pod = _pod(items=[{"key": "profile.yaml", "path": "p.yaml"}])
    assert configmap_mount_for(pod, "/etc/kubetier/profile/p.yaml") == ("llama-routing", "profile.yaml")


def test_paths_outside_configmap_mounts_and_builtin_names_are_left_alone():
    assert configmap_mount_for(_pod(), "/tmp/profile.yaml") is None
    assert configmap_mount_for(_pod(), "llama-3.1-8b-h100") is None
    assert configmap_mount_for({"spec": {}}, "/etc/kubetier/profile/profile.yaml") is None
