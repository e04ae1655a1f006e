"""scripts/calibrate_cascade.py as a user runs it: evaluation results in, a threshold written into a profile."""

import json
import subprocess
import sys
from pathlib import Path

from tests.serve_app.analysis.test_cascade_eval import SAMPLE

ROOT = Path(__file__).resolve().parents[2]


def test_calibration_writes_only_the_threshold_into_a_profile(tmp_path):
    rows = [{**{f: getattr(a, f) for f in a.__dataclass_fields__}, "id": i} for i, a in enumerate(SAMPLE)]
    results, profile = tmp_path / "cascade-eval.json", tmp_path / "profile.yaml"
    results.write_text(json.dumps({"answers": rows}))
    shipped = (ROOT / "configs/local-cpu.yaml").read_text()
    profile.write_text(shipped)
    run = subprocess.run([sys.executable, "-m", "scripts.calibrate_cascade", "--results", str(results),
                          "--recovered", "0.8", "--write", str(profile)], cwd=ROOT, check=True, capture_output=True,
                         text=True)
    assert "wrote cascade.threshold: 0.45 " in run.stdout
    written = profile.read_text()
    assert "threshold: 0.45\n" in written
    changed = [(a, b) for a, b in zip(shipped.splitlines(), written.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].strip().startswith("threshold:")


def test_a_learned_rule_is_written_only_where_it_beats_mean_prob(tmp_path):
    from tests.serve_app.analysis.test_deferral import rows

    profile = tmp_path / "profile.yaml"
    shipped = (ROOT / "configs/local-cpu.yaml").read_text()

    def calibrate(sample):
        results = tmp_path / "cascade-eval.json"
        results.write_text(json.dumps({"answers": sample}))
        profile.write_text(shipped)
        return subprocess.run([sys.executable, "-m", "scripts.calibrate_cascade", "--results", str(results),
                               "--recovered", "0.8", "--learn", "--write", str(profile)], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    out = calibrate(rows())
    assert "wrote scorer: learned" in out and '"learned_cv_apgr"' in out
    written = profile.read_text()
    assert "scorer: learned" in written and '  learned: {"intercept": ' in written
    kept = [line for line in written.splitlines() if not line.strip().startswith("learned:")]
    changed = [a for a, b in zip(shipped.splitlines(), kept, strict=True) if a != b]
    assert [a.strip().split(":")[0] for a in changed] == ["scorer", "threshold"]
    shuffled = [{**r, "cheap_correct": r["id"] % 3 == 0} for r in rows()]  # labels the features cannot predict
    assert "not written" in calibrate(shuffled) and profile.read_text() == shipped
