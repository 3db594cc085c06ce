"""The reserved-count recommendation: layers in use more than the price ratio, counted in billing blocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from controller.policy import load_policy
from controller.reserved import billed_share, recommend_reserved

ROOT = Path(__file__).resolve().parent.parent


def no_spot(billing_min: int):
    return load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        capacity={"peak_nodes": None, "rps_per_node": 10.0}, spot={"max_share": 0.0}, planning={"headroom": 0.0},
        classes={"on_demand": {"price_per_hour": 4.0, "lead_time": {"mean_min": 8}, "billing_min": billing_min}})


def test_billed_share_pays_every_block_with_a_minute_of_use():
    used = np.tile(np.arange(60) < 10, 24)  # ten minutes of every hour
    assert billed_share(used, 1) == used.mean()
    assert billed_share(used, 60) == 1.0
    assert billed_share(np.arange(90) < 5, 60) == 60 / 90  # the last, partial hour is not used


def test_a_layer_used_ten_minutes_an_hour_is_worth_reserving_only_when_billed_by_the_hour():
    # Two nodes all day; a third for ten minutes of every hour. Reserved 2.50 vs on-demand 4.00: a
    # layer is worth reserving when it is paid more than 62.5% of the time.
    need_rps = np.tile(np.where(np.arange(60) < 10, 25.0, 15.0), 48)
    per_minute = recommend_reserved(need_rps, no_spot(1), 10.0)
    hourly = recommend_reserved(need_rps, no_spot(60), 10.0)
    assert per_minute["reserved"] == 2 and per_minute["layer_use"][:3] == [1.0, 1.0, round(10 / 60, 4)]
    assert hourly["reserved"] == 3 and hourly["layer_use"][:3] == [1.0, 1.0, 1.0]
    assert hourly["cost_usd"] < hourly["cost_usd_without"]


def test_recommend_reserved_command_prints_its_json():
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "recommend-reserved", "--policy",
                          str(ROOT / "configs" / "chat-hourly-no-spot.yaml"), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["reserved"] >= 1 and doc["cost_usd"] <= doc["cost_usd_without"]
