"""v changed meaning in issue 11 (dvdp-math.md s11): what was trained as v before keeps working."""
import json
import os

import pytest
from safetensors.torch import save_file

from dvdp_hr.export import band_variances_of, load_pretrained, read_export_info, schedule_dict
from dvdp_hr.train.config import load_config
from dvdp_hr.train.resume import check_resumable
from dvdp_hr.train.setup import build_model, build_schedule

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_cpu.yaml")


def test_a_config_without_loss_weighting_keeps_the_old_v():
    assert load_config(TINY, ["model.prediction=v"]).model.prediction == "v_orthonormal"
    new = load_config(TINY, ["model.prediction=v", "train.loss_weighting=min_snr"])
    assert new.model.prediction == "v" and new.train.loss_weighting == "min_snr"


def _v1_export(path):
    """An export as written before issue 11 (format /1, no shift/grid keys, prediction v)."""
    cfg = load_config(TINY, ["model.prediction=v", "train.loss_weighting=min_snr"])
    model = build_model(cfg, build_schedule(cfg))
    tree = cfg.to_dict()
    old_schedule = {k: v for k, v in schedule_dict(tree).items() if k not in ("shift_base", "sampling_grid")}
    info = {"format": "dvdp_hr.export/1", "model": tree["model"], "schedule": old_schedule}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "dvdp_hr.export/1", "dvdp_hr": json.dumps(info)})
    return str(path)


def test_export_format_1_loads_v_as_v_orthonormal(tmp_path):
    path = _v1_export(tmp_path / "old.safetensors")
    assert read_export_info(path)["model"]["prediction"] == "v_orthonormal"
    model, schedule = load_pretrained(path)
    assert model.config.prediction == "v_orthonormal" and schedule.sampling_grid == "uniform"


def test_band_variances_travel_with_the_config():
    cfg = load_config(TINY, ["schedule.band_stats.sigma_perp2=[0.01, 0.1]"])
    assert band_variances_of(cfg.to_dict()) == [0.01, 0.1]
    assert band_variances_of(load_config(TINY).to_dict()) is None


def test_resume_treats_new_keys_at_their_defaults_as_unchanged():
    cfg = load_config(TINY, ["model.prediction=v"])  # an old config: v_orthonormal
    saved = cfg.to_dict()
    for section, key in (("train", "loss_weighting"), ("train", "stage_weighting"), ("train", "sigma_data"),
                         ("schedule", "shift_base"), ("schedule", "sampling_grid")):
        del saved[section][key]  # as a checkpoint written before issue 11 holds it
    saved["model"]["prediction"] = "v"
    check_resumable({"world_size": 1, "config": saved}, cfg, 1)
    changed = load_config(TINY, ["train.stage_weighting=uniform", "model.prediction=v"])
    with pytest.raises(Exception, match="train.stage_weighting"):
        check_resumable({"world_size": 1, "config": saved}, changed, 1)
