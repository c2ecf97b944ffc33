"""The aiokafka group-join fix patches the release series it restates, and nothing else."""

from __future__ import annotations

import aiokafka
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

from streamer import groupjoin


def test_patches_the_series_it_restates(monkeypatch):
    monkeypatch.setattr(CoordinatorGroupRebalance, "perform_group_join", CoordinatorGroupRebalance.perform_group_join)
    monkeypatch.setattr(aiokafka, "__version__", "0.14.0")
    assert groupjoin.install() and groupjoin.install()  # idempotent
    assert CoordinatorGroupRebalance.perform_group_join is groupjoin.perform_group_join


def test_leaves_other_releases_alone(monkeypatch):
    original = CoordinatorGroupRebalance.perform_group_join
    monkeypatch.setattr(CoordinatorGroupRebalance, "perform_group_join", original)
    monkeypatch.setattr(aiokafka, "__version__", "0.15.0")
    assert not groupjoin.install()
    assert CoordinatorGroupRebalance.perform_group_join is original
