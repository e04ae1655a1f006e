"""scripts/kuberay_manifest.py as a user runs it: the committed manifest is up to date; a changed profile
makes it stale, and rewriting embeds the profile while the Ray cluster's part stays as it was."""

import shutil
import subprocess
import sys

import yaml

from scripts.harness.cluster import ROOT


def tool(*args):
    return subprocess.run([sys.executable, "-m", "scripts.kuberay_manifest", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_the_committed_manifest_embeds_the_gpu_profile():
    assert tool("--check").returncode == 0


def test_a_changed_profile_is_caught_then_embedded_and_the_cluster_left_alone(tmp_path):
    manifest, profile = tmp_path / "rayservice.yaml", tmp_path / "profile.yaml"
    shutil.copy(ROOT / "configs" / "kuberay-rayservice.yaml", manifest)
    profile.write_text("# a comment left out\nproxy_location: HeadOnly\napplications: []\n")
    stale = tool("--check", "--manifest", manifest, "--profile", profile)
    assert stale.returncode != 0 and "out of date" in stale.stderr
    assert tool("--manifest", manifest, "--profile", profile).returncode == 0
    before, after = yaml.safe_load((ROOT / "configs" / "kuberay-rayservice.yaml").read_text()), yaml.safe_load(
        manifest.read_text())
    assert yaml.safe_load(after["spec"]["serveConfigV2"]) == {"proxy_location": "HeadOnly", "applications": []}
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
