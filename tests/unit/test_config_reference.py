"""docs/config-reference.md is generated from the config dataclasses and cannot drift from them."""
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dvdp_hr.train import config_reference as ref
from dvdp_hr.train.config import RunConfig

DOC = "docs/config-reference.md"
REGENERATE = "python -m dvdp_hr.train.config_reference --out docs/config-reference.md"


def _rows() -> dict[str, list[str]]:
    """key -> [type, default, description] of every table row in the generated reference."""
    rows = {}
    for line in ref.render().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            key = cells[0].strip("`")
            assert key not in rows, f"{key} is listed twice"
            rows[key] = cells[1:]
    return rows


def _section_class(tp):
    """The dataclass in a field's type (plain or Optional), else None."""
    candidates = [tp, *typing.get_args(tp)]
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _leaf_keys(cls, prefix="") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        sub = _section_class(hints[f.name])
        keys += _leaf_keys(sub, f"{prefix}{f.name}.") if sub else [prefix + f.name]
    return keys


def test_committed_reference_is_up_to_date(request):
    path = Path(request.config.rootpath) / DOC
    committed = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert committed == ref.render(), f"{DOC} is out of date with the config dataclasses: run `{REGENERATE}`"


def test_every_leaf_field_is_a_row():
    leaves = _leaf_keys(RunConfig)
    rows = _rows()
    assert len(leaves) > 90  # the whole tree was walked, not just one section
    missing = [k for k in leaves if k not in rows]
    assert not missing, f"fields missing from the reference: {missing}"
    extra = set(rows) - set(leaves)  # only nested sections may add rows of their own
    assert extra == {"schedule.band_stats"}


def test_descriptions_come_from_the_comments():
    rows = _rows()
    # trailing comments
    assert rows["schedule.turning_points"][2] == 'or "auto"'
    assert "consecutive skipped steps before stopping" in rows["train.max_nonfinite"][2]
    # comment lines above a field, joined with spaces, in order
    assert rows["schedule.beta_schedule"][2].startswith("linear \\| cosine \\| cosine_shifted")
    weighting = rows["train.loss_weighting"][2]
    assert "min_snr \\| min_snr_orthonormal \\| eps_mse \\| edm (dvdp-math.md s11). The default keeps" in weighting
    assert weighting.endswith('also keep the old "v" (v_orthonormal).')
    assert rows["train.stage_weighting"][2] == (
        "how often each stage is trained when stage_weights is None (dvdp-math.md s12): "
        "timestep_share \\| uniform \\| logsnr_span \\| compute")
    # sections from other modules, and a section's docstring
    assert rows["model.prediction"][2].startswith('"x0" \\| "eps"')
    assert "one per boundary k -> k+1" in rows["schedule.band_stats.sigma_perp2"][2]
    assert rows["schedule.band_stats"][2].startswith("Per-coordinate detail-band variances")


@dataclass
class _Commented:
    """A docstring, not a comment."""
    # above, line one
    # above, line two
    both: int = 1  # trailing
    # not attached: a blank line follows

    alone: str = "x"
    multi: list = field(
        default_factory=list,  # inside the field's brackets
    )
    bare: float = 0.5

    def method(self):
        both: int = 2  # a local, not the field
        return both


def test_above_and_trailing_comments_are_joined_verbatim():
    comments = ref.field_comments(_Commented)
    assert comments == {"both": "above, line one above, line two trailing", "alone": "",
                        "multi": "inside the field's brackets", "bare": ""}
    assert ref.class_docstring(_Commented) == "A docstring, not a comment."


def test_types_and_defaults_are_rendered_like_the_source_and_yaml():
    rows = _rows()
    assert rows["schedule.turning_points"][:2] == ["`Union[list, str]`", "`[300, 600]`"]  # default_factory
    assert rows["train.micro_batch"][:2] == ["`list`", "`[8, 8, 8]`"]
    assert rows["train.stages"][:2] == ["`Optional[list]`", "`null`"]
    assert rows["data.flip"][1] == "`true`"
    assert rows["model.stage_presets"][0] == "`list[str] \\| None`"  # a module without future annotations
    assert rows["plan.throughput_img_s"][1] == "`{}`"


def test_check_flag_names_the_regenerate_command(tmp_path, capsys):
    stale = tmp_path / "ref.md"
    stale.write_text("old\n")
    assert ref.main(["--check", str(stale)]) == 1
    assert f"{stale} is out of date: run `python -m dvdp_hr.train.config_reference --out {stale}`" in (
        capsys.readouterr().err)
    assert ref.main(["--out", str(stale)]) == 0
    assert ref.main(["--check", str(stale)]) == 0
    assert stale.read_text() == ref.render()
