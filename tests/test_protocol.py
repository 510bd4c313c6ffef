"""Protocol schema: examples validate; every error path names file, line, field and value."""

from pathlib import Path

import pytest

from insilico_trials.app.cli import main
from insilico_trials.spec.protocol import ProtocolError, load_protocol

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "protocols").glob("*.yaml"))
BASE = ROOT / "protocols" / "onc_phase2_orr.yaml"


def _variant(tmp_path: Path, old: str, new: str, name: str = "bad.yaml") -> Path:
    text = BASE.read_text()
    assert old in text, f"fixture text {old!r} not in the base protocol"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith(needle) or (
            needle in line and not line.lstrip().startswith("#")
        ):
            return i
    raise AssertionError(needle)


def test_examples_exist_and_validate(capsys):
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        load_protocol(path)
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    assert capsys.readouterr().out.count(": valid") == len(EXAMPLES)


@pytest.mark.parametrize(
    ("old", "new", "needle", "path", "message", "got"),
    [
        # negative dose
        ("dose: 200,", "dose: -50,", "dose: -50", "arms[1].regimen.dose", "greater than 0", "-50"),
        # unknown key (a typo of `seed`)
        ("seed: 20261124", "seed: 20261124\nsead: 3", "sead: 3", "sead", "unknown key", "3"),
        # wrong type
        (
            "    n: 40\n    control: true",
            "    n: forty\n    control: true",
            "n: forty",
            "arms[0].n",
            "valid integer",
            "'forty'",
        ),
        # an unknown model name
        (
            "model: pk1cmt",
            "model: pk9cmt",
            "model: pk9cmt",
            "pk.model",
            "unknown PK model 'pk9cmt'",
            "'pk9cmt'",
        ),
    ],
)
def test_single_error_names_line_field_and_value(
    tmp_path, capsys, old, new, needle, path, message, got
):
    bad = _variant(tmp_path, old, new)
    with pytest.raises(ProtocolError) as err:
        load_protocol(bad)
    text = str(err.value)
    line = _line_of(bad, needle)
    assert f"{bad}:{line}: {path}: " in text
    assert message in text
    assert f"(got {got})" in text
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}:{line}: {path}:" in capsys.readouterr().err


def test_missing_arm(tmp_path):
    text = BASE.read_text()
    start = text.index("  - name: tki200")
    end = text.index("disease:")
    bad = tmp_path / "one_arm.yaml"
    bad.write_text(text[:start] + "\n" + text[end:])
    with pytest.raises(ProtocolError) as err:
        load_protocol(bad)
    assert f"{bad}:{_line_of(bad, 'arms:')}: arms: List should have at least 2 items" in str(
        err.value
    )


def test_missing_required_key_and_every_error_listed(tmp_path):
    text = BASE.read_text().replace("seed: 20261124\n", "").replace("dose: 200,", "dose: 0,")
    bad = tmp_path / "two.yaml"
    bad.write_text(text.replace("interval_h: 24,", "interval_h: -1,"))
    with pytest.raises(ProtocolError) as err:
        load_protocol(bad)
    issues = {i.path: i for i in err.value.issues}
    assert set(issues) == {"seed", "arms[1].regimen.dose", "arms[1].regimen.interval_h"}
    assert issues["seed"].message == "required key is missing"
    assert "(got" not in str(issues["seed"])


def test_two_controls_and_cross_section_checks(tmp_path):
    bad = _variant(
        tmp_path,
        "  - name: tki200\n    n: 40\n",
        "  - name: tki200\n    n: 40\n    control: true\n",
    )
    with pytest.raises(ProtocolError, match="exactly one arm must have control: true, found 2"):
        load_protocol(bad)
    bad = _variant(tmp_path, "    LAMBDA:", "    LAMBDX:", "lam.yaml")
    with pytest.raises(ProtocolError, match=r"disease\.model: model claret needs parameter LAMBDA"):
        load_protocol(bad)
    bad = _variant(tmp_path, "unit: mg, interval_h", "unit: mg/m2, interval_h", "bsa.yaml")
    bad.write_text(bad.read_text().replace("derived: [BSA, BMI]", "derived: [BMI]"))
    with pytest.raises(
        ProtocolError, match=r"arms\[1\].regimen.unit: dosing in mg/m2 needs covariate BSA"
    ):
        load_protocol(bad)


def test_yaml_syntax_error_and_duplicate_key(tmp_path):
    bad = _variant(tmp_path, "seed: 20261124", "seed: [1, 2")
    with pytest.raises(ProtocolError, match=rf"{bad}:\d+: not valid YAML"):
        load_protocol(bad)
    dup = _variant(tmp_path, "seed: 20261124", "seed: 1\nseed: 2", "dup.yaml")
    with pytest.raises(ProtocolError) as err:
        load_protocol(dup)
    assert f"{dup}:{_line_of(dup, 'seed: 2')}: seed: duplicate key" in str(err.value)


def test_validate_writes_nothing_under_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _variant(tmp_path, "dose: 200,", "dose: -50,")
    assert main(["run", str(bad)]) == 2
    assert main(["validate", str(bad), str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "reports").exists()
    assert not (tmp_path / ".insilico").exists()


def test_protocol_hash_ignores_formatting(tmp_path):
    a = load_protocol(BASE)
    reformatted = tmp_path / "same.yaml"
    reformatted.write_text("# a comment\n" + BASE.read_text())
    assert load_protocol(reformatted).sha256() == a.sha256()
    changed = _variant(tmp_path, "seed: 20261124", "seed: 20261125", "changed.yaml")
    assert load_protocol(changed).sha256() != a.sha256()


# SHA-256 of the example protocols as archived by `run`: zhang2017_adaptive at commit f2b8d18
# (2026-11-29), before the schema gained its `sensitivity` section (and the synthetic control
# its replicate virtual arms, which it does not use); the two borrowing examples as changed for
# issue #15 (model uncertainty declared; the borrowing rule is part of their analysis, so
# their hash changed on purpose: b43579c6 and a8670dbb before).
ARCHIVED_HASHES = {
    "onc_phase2_orr": "7586fd1f819bd84f347c0979f42f75217474fa6421a9d29e1db658e119ce9a2d",
    "zhang2017_adaptive": "70a78ffa8846736215b834ae87d298ac31eb822b4e9ba9e73903ff650509aa7f",
    "design_binary_borrowing": "5a54d335d82807b260f5147aa556dc05a4b5c623d051077abc2c7cc0628d8793",
}


@pytest.mark.parametrize("name", sorted(ARCHIVED_HASHES))
def test_protocol_hash_survives_a_new_default_section(name):
    """A section the schema gained later is hashed only when it differs from its default:
    archived protocols keep their hash (run ids, caches, provenance), changed ones do not."""
    from insilico_trials.testing import with_fields

    protocol = load_protocol(ROOT / "protocols" / f"{name}.yaml")
    assert protocol.sha256() == ARCHIVED_HASHES[name]
    assert with_fields(protocol, {"sensitivity.sobol": False}).sha256() != ARCHIVED_HASHES[name]


def test_adaptive_rule_is_named_and_the_script_rule_fixes_its_thresholds():
    """Zhang et al. 2017 has two adaptive rules: the clinical trial's (default, `trial`, the
    hash of protocols written before the name existed unchanged) and the one of the paper's
    simulations (`script`), whose thresholds are not the protocol's to set."""
    from insilico_trials.sim.tumour import ZHANG2017_SCRIPT_RULE, AdaptiveRule
    from insilico_trials.testing import with_fields

    protocol = load_protocol(ROOT / "protocols" / "zhang2017_adaptive.yaml")
    assert protocol.arms[1].regimen.adaptive.rule == "trial"
    script = with_fields(protocol, {"arms[1].regimen.adaptive.rule": "script"})
    assert script.sha256() != protocol.sha256()
    assert AdaptiveRule.from_spec(script.arms[1].regimen.adaptive) == ZHANG2017_SCRIPT_RULE
    with pytest.raises(ValueError, match=r"rule .script. fixes its thresholds.*check_every_days"):
        with_fields(
            protocol,
            {
                "arms[1].regimen.adaptive.rule": "script",
                "arms[1].regimen.adaptive.check_every_days": 7,
            },
        )
    with pytest.raises(ValueError, match=r"trial.*script"):
        with_fields(protocol, {"arms[1].regimen.adaptive.rule": "clinical"})


def test_twin_arms_refuse_the_script_rule():
    from insilico_trials.testing import with_fields

    protocol = load_protocol(ROOT / "protocols" / "abiraterone_twins.yaml")
    with pytest.raises(ValueError, match="reads the model's equilibrium PSA"):
        with_fields(protocol, {"arms[1].regimen.adaptive": {"rule": "script"}})


def test_track_cut_files_is_hashed_only_when_asked():
    """real_data.track_cut_files (added later): False, the old behaviour, leaves every
    protocol's hash as it was; True is part of the protocol."""
    from insilico_trials.testing import with_fields

    protocol = load_protocol(ROOT / "protocols" / "abiraterone_twins.yaml")
    # the hash this protocol had at c716bed, before the field existed (computed there)
    assert protocol.sha256() == "9c3ca9b269b9f0ea9978501c1677bf8026b50d1b5546207535033c0400ed81a6"
    on = with_fields(protocol, {"real_data.track_cut_files": True})
    assert on.sha256() != protocol.sha256()
